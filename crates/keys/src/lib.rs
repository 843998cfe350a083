//! Key derivation as dstack derives keys (UPSTREAM.md §4).
