//! Runners and sandboxes. Filled in by the executor issue.
