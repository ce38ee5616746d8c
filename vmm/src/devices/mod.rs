//! The legacy devices duet's guests need: COM1, the i8042 reset line, and
//! duet's own ready/exit ports.

pub mod exit_port;
pub mod i8042;
pub mod serial;

pub use exit_port::ExitPort;
pub use i8042::I8042;
pub use serial::SerialDevice;
pub mod virtio;
