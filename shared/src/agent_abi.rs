//! `duet exec` on a microVM: the protocol between the host
//! (`duet_vmm::agent`) and the guest agent (duet-init's `agent` module),
//! defined once for both sides.
//!
//! The stream is a vsock connection to [`AGENT_PORT`] in the guest; on the
//! host it is a connection to the VMM's Unix socket `<instance>/agent.sock`
//! after the hybrid-vsock handshake (`CONNECT <port>\n`, answered
//! `OK <hostport>\n`; see `duet_vmm::devices::virtio::vsock`).
//!
//! 1. host to guest: one JSON line, a [`Request`] (at most [`MAX_LINE`] bytes);
//! 2. guest to host: one JSON line, a [`Reply`]: [`Reply::Ok`] (the command
//!    was started, or the signal sent) or [`Reply::Error`] with a message;
//! 3. exec only, after `Ok`: frames both ways ([`Frame`], [`encode_frame`]):
//!    kind (1 byte), payload length (u32 little endian), payload (at most
//!    [`MAX_FRAME`] bytes). The host sends [`Frame::Stdin`], [`Frame::StdinEof`]
//!    and [`Frame::Resize`]; the guest sends [`Frame::Stdout`],
//!    [`Frame::Stderr`] and last [`Frame::Exit`] (JSON of the command's
//!    `WorkloadExit`), then closes. A command that cannot be started still
//!    gets `Ok`: its message arrives on stderr and its exit is 127 (not
//!    found) or 126 (not executable), as in a shell.
//!
//! If the host goes away during an exec, the guest kills the command's
//! process group.

pub use crate::guest_abi::AGENT_PORT;
use crate::runtime::{ExecRequest, WorkloadExit};
use serde::{Deserialize, Serialize};

/// Longest request or reply line (newline included).
pub const MAX_LINE: usize = 1 << 20;
/// Largest frame payload.
pub const MAX_FRAME: usize = 64 << 10;
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 5;

/// What the host asks of the guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Run a command in the workload's root, environment and cgroup.
    Exec(ExecRequest),
    /// Send a signal to the workload's process.
    Kill {
        /// Signal number.
        signal: i32,
    },
    /// Give the guest's `eth0` another identity: a clone restored from a
    /// snapshot of a VM on duet's bridge gets its own MAC, address, route
    /// and `/etc/hosts`/`/etc/resolv.conf` before it counts as started.
    Network(NetworkUpdate),
    /// The size of the terminal the workload's console stands for
    /// (`duet run -t`, an engine's tty): the guest's console takes it, and
    /// the workload gets SIGWINCH as on any resized terminal.
    ConsoleSize {
        /// Lines.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// The new identity of the guest's `eth0` ([`Request::Network`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkUpdate {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its address.
    pub address: std::net::Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The new `/etc/resolv.conf`.
    pub resolv_conf: String,
    /// The new `/etc/hosts`.
    pub hosts: String,
}

/// The guest agent's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Started (exec: frames follow) or done (kill).
    Ok,
    /// Refused; the message says why.
    Error(String),
}

/// One frame after an exec's `Ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// host to guest: bytes for the command's stdin.
    Stdin(Vec<u8>),
    /// host to guest: the host's stdin ended.
    StdinEof,
    /// host to guest: the terminal's new size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// guest to host: the command's stdout (or the pty's output).
    Stdout(Vec<u8>),
    /// guest to host: the command's stderr.
    Stderr(Vec<u8>),
    /// guest to host, last: how the command ended.
    Exit(WorkloadExit),
}

const K_STDIN: u8 = 1;
const K_STDIN_EOF: u8 = 2;
const K_RESIZE: u8 = 3;
const K_STDOUT: u8 = 16;
const K_STDERR: u8 = 17;
const K_EXIT: u8 = 18;

/// A protocol violation by the other side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A line longer than [`MAX_LINE`].
    #[error("a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A frame longer than [`MAX_FRAME`].
    #[error("a frame of {0} bytes (at most {MAX_FRAME})")]
    FrameTooLong(usize),
    /// Unknown frame kind or bad payload.
    #[error("bad frame (kind {0})")]
    BadFrame(u8),
    /// A line that is not the expected JSON.
    #[error("bad message: {0}")]
    BadMessage(String),
}

/// The wire form of `frame`.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match frame {
        Frame::Stdin(d) => (K_STDIN, d.into()),
        Frame::StdinEof => (K_STDIN_EOF, (&[][..]).into()),
        Frame::Resize { rows, cols } => {
            let mut p = rows.to_le_bytes().to_vec();
            p.extend_from_slice(&cols.to_le_bytes());
            (K_RESIZE, p.into())
        }
        Frame::Stdout(d) => (K_STDOUT, d.into()),
        Frame::Stderr(d) => (K_STDERR, d.into()),
        Frame::Exit(e) => (
            K_EXIT,
            serde_json::to_vec(e)
                .expect("WorkloadExit serializes")
                .into(),
        ),
    };
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Frames of data (stdin, stdout, stderr), each at most [`MAX_FRAME`] bytes.
pub fn data_frames(data: &[u8], make: fn(Vec<u8>) -> Frame) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(MAX_FRAME) {
        out.extend_from_slice(&encode_frame(&make(chunk.to_vec())));
    }
    out
}

fn decode_frame(kind: u8, p: &[u8]) -> Result<Frame, ProtocolError> {
    Ok(match kind {
        K_STDIN => Frame::Stdin(p.to_vec()),
        K_STDIN_EOF if p.is_empty() => Frame::StdinEof,
        K_RESIZE if p.len() == 4 => Frame::Resize {
            rows: u16::from_le_bytes([p[0], p[1]]),
            cols: u16::from_le_bytes([p[2], p[3]]),
        },
        K_STDOUT => Frame::Stdout(p.to_vec()),
        K_STDERR => Frame::Stderr(p.to_vec()),
        K_EXIT => {
            Frame::Exit(serde_json::from_slice(p).map_err(|_| ProtocolError::BadFrame(kind))?)
        }
        _ => return Err(ProtocolError::BadFrame(kind)),
    })
}

/// Incremental decoder of what arrives on the stream: push the bytes read,
/// take a line (the request or reply), then frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not taken yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next line without its newline, if complete.
    pub fn take_line(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(i) if i < MAX_LINE => {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..=i);
                Ok(Some(line))
            }
            Some(_) => Err(ProtocolError::LineTooLong),
            None if self.buf.len() >= MAX_LINE => Err(ProtocolError::LineTooLong),
            None => Ok(None),
        }
    }

    /// The next JSON message line, if complete.
    pub fn take_message<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> Result<Option<T>, ProtocolError> {
        match self.take_line()? {
            None => Ok(None),
            Some(l) => serde_json::from_slice(&l)
                .map(Some)
                .map_err(|e| ProtocolError::BadMessage(e.to_string())),
        }
    }

    /// The next frame, if complete.
    pub fn take_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(ProtocolError::FrameTooLong(len));
        }
        if self.buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let f = decode_frame(self.buf[0], &self.buf[FRAME_HEADER..FRAME_HEADER + len])?;
        self.buf.drain(..FRAME_HEADER + len);
        Ok(Some(f))
    }
}

/// A message as one JSON line.
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("agent messages serialize");
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_json_lines() {
        let r = Request::Exec(ExecRequest {
            command: vec!["sh".into(), "-c".into(), "echo \"x\"\n".into()],
            env: vec!["A=b".into()],
            workdir: Some("/tmp".into()),
            tty: true,
            interactive: false,
            user: None,
        });
        let mut d = Decoder::new();
        d.push(&encode_line(&r));
        d.push(&encode_line(&Request::Kill { signal: 15 }));
        assert_eq!(d.take_message::<Request>().unwrap(), Some(r));
        assert_eq!(
            d.take_message::<Request>().unwrap(),
            Some(Request::Kill { signal: 15 })
        );
        assert_eq!(d.take_message::<Request>().unwrap(), None);
        d.push(b"{\"nope\":1}\n");
        assert!(d.take_message::<Reply>().is_err());
    }

    #[test]
    fn frames_round_trip_split_anywhere() {
        let frames = vec![
            Frame::Stdin(b"abc".to_vec()),
            Frame::StdinEof,
            Frame::Resize { rows: 24, cols: 80 },
            Frame::Stdout(vec![0; 1000]),
            Frame::Stderr(b"err".to_vec()),
            Frame::Exit(WorkloadExit::Code(7)),
            Frame::Exit(WorkloadExit::Signal(15)),
        ];
        let mut wire = encode_line(&Reply::Ok);
        for f in &frames {
            wire.extend(encode_frame(f));
        }
        // One byte at a time: nothing is taken before it is complete.
        let mut d = Decoder::new();
        let mut line = None;
        let mut got = Vec::new();
        for b in wire {
            d.push(&[b]);
            if line.is_none() {
                line = d.take_message::<Reply>().unwrap();
                continue;
            }
            while let Some(f) = d.take_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(line, Some(Reply::Ok));
        assert_eq!(got, frames);
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        let mut d = Decoder::new();
        d.push(&[K_STDOUT, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.take_frame(),
            Err(ProtocolError::FrameTooLong(_))
        ));
        let mut d = Decoder::new();
        d.push(&[99, 0, 0, 0, 0]);
        assert_eq!(d.take_frame(), Err(ProtocolError::BadFrame(99)));
        let mut d = Decoder::new();
        d.push(&[K_RESIZE, 1, 0, 0, 0, 7]);
        assert_eq!(d.take_frame(), Err(ProtocolError::BadFrame(K_RESIZE)));
        let big = data_frames(&vec![1u8; MAX_FRAME + 1], Frame::Stdout);
        let mut d = Decoder::new();
        d.push(&big);
        assert_eq!(
            d.take_frame().unwrap(),
            Some(Frame::Stdout(vec![1; MAX_FRAME]))
        );
        assert_eq!(d.take_frame().unwrap(), Some(Frame::Stdout(vec![1])));
    }
}
