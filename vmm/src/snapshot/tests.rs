//! Snapshot round trips need KVM; they live in vm's tiny-guest tests
//! (tests/ of the crate). Here: the file format alone.
