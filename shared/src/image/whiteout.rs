//! OCI/AUFS whiteouts, turned into overlayfs's own form on unpack.
