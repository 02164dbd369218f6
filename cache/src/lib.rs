//! Content-addressed artifact cache (keys, entries, locks, pruning). Filled in by the cache issue.
