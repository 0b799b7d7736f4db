"""What the tests share: the stacks they run against (live.py, extra_api.py,
fault_stack.py), requests and database reads (helpers.py, reads.py), and the loopback
servers and clients they drive (docs/development.md "Tests"). A test module imports from
here, never from another test module."""
