"""The web console: one page for the whole platform, served by `python -m haplane.console`.

Layer: console, between the CLI and `haplane.local` (`cli > console > local` in the
import-linter contract). It may use `haplane.local` to gather the platform's status the way
`haplane status` does (with the state dir's credentials, read-only), and reaches the API only
as a client, through a gate, **with the signed-in user's own credentials**: what a user sees
of the API (Events, the audit permission) is what RBAC gives that user, never more. It never
imports the API server's, the gate's or the replicators' internals.

Front end: **server-rendered HTML with htmx** (2.x) and its SSE extension, vendored under
`static/` with their licences (from the npm registry: `htmx.org`, `htmx-ext-sse`; BSD Zero
Clause), served by the console itself, never from a CDN. Why not a build (Vite and a
framework): every page is a view of state that lives on the server (the status the console
gathers, the API's answers as the user), so rendering it there keeps one source of truth and
one language, needs no toolchain, no bundle and no client-side API client or token handling
(the token stays in an HttpOnly cookie JavaScript cannot read), and the e2e tests see exactly
the HTML the server wrote. htmx is ~50 KB, dependency-free, and swaps server-sent fragments in
place: the page never reloads.

Live updates: every second while someone looks (every 10 s otherwise: gathering costs the
platform it observes), the console gathers the platform's status
(`haplane.local.status.gather_status`, as `haplane status --json` does), renders the topology
map and the failover history, and when either changed pushes it to every open page as a
server-sent event (`/sse`: events `map` and `history`, each carrying the fragment's HTML),
which htmx swaps in. A watch on the global control etcd's active-region record gathers at
once when it changes, so a failover reaches open pages without waiting for the next tick.

Modules: `view` (the status as a map and a history: pure), `render` (HTML: pure, every value
escaped), `auth` (credentials from a cookie or an Authorization header, checked with
SelfSubjectReview through the gate; authorization by asking the API as the user), `server`
(the aiohttp application), `__main__` (the process).
"""
