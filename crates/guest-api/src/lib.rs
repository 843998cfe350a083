//! The guest API on `dstack.sock` and `tappd.sock` (UPSTREAM.md §1).
