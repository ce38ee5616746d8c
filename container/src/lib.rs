//! duet-container
