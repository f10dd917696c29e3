"""Tests of the gate layer (haplane.gate): the forwarding engine as a process and a library."""
