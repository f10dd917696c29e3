"""`Warning` headers as kube-apiserver's warning recorder writes them (api.server
.warning_headers): each text once, all while they fit in 4 KiB, else each cut to 256
characters and as many as fit."""

from __future__ import annotations

from haplane.api.server import MAX_WARNING_LEN, MAX_WARNINGS_SIZE, warning_headers


def test_each_warning_once_in_order_and_quoted() -> None:
    headers = warning_headers(["a", 'say "b"', "a", "", "c\nd"])
    assert headers == ['299 - "a"', '299 - "say \\"b\\""', '299 - "c d"']


def test_too_many_are_cut_to_fit_and_never_exceed_the_size() -> None:
    many = [f"{i:04d} " + "x" * 600 for i in range(4000)]  # ratcheting's 4,000 errors
    headers = warning_headers(many)
    assert sum(len(h) for h in headers) <= MAX_WARNINGS_SIZE
    assert 10 < len(headers) < 100  # within what a client takes (http.client: 100 headers)
    assert all(len(h) <= len('299 - ""') + MAX_WARNING_LEN for h in headers)
    assert headers[0].startswith('299 - "0000 xxx') and headers[1].startswith('299 - "0001 ')
    few = [f"{i} " + "y" * 300 for i in range(3)]  # they fit whole: not cut
    assert [h[len('299 - "') : -1] for h in warning_headers(few)] == few
