//! Archive member names come from whoever made the archive: before one is
//! printed, control characters (which could move the cursor, retitle the
//! terminal or hide text) and bytes that are not UTF-8 are escaped.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `bytes` as text safe for a terminal: C0/C1 controls, DEL, `\` and
/// invalid UTF-8 become `\xNN` / `\u{NNNN}` escapes; everything else is kept.
pub fn escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A path for messages, escaped as [`escaped`] does.
pub fn shown(p: &Path) -> String {
    escaped(p.as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bad_utf8_are_escaped() {
        assert_eq!(escaped(b"etc/motd"), "etc/motd");
        assert_eq!(escaped(b"a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escaped(b"x\ny\r\x7f"), "x\\x0ay\\x0d\\x7f");
        assert_eq!(escaped("c\u{9b}d".as_bytes()), "c\\u{009b}d");
        assert_eq!(escaped(b"\xff\\"), "\\xff\\\\");
        assert_eq!(escaped("é".as_bytes()), "é");
    }
}
