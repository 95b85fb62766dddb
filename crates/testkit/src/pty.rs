//! A program in a pseudo-terminal, as a user runs it in a terminal: its output is what a person
//! would read (it sees a TTY on stdin, stdout and stderr), and Ctrl-C typed into it reaches its
//! process group as SIGINT through the terminal's line discipline, not a signal sent by hand.

use crate::eventually;
use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A child process on its own pseudo-terminal; killed on drop.
pub struct Pty {
    child: Child,
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    /// Starts `cmd` as the session leader of a new terminal (stdin, stdout and stderr).
    pub fn spawn(cmd: &mut Command) -> Pty {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two new descriptors into the given ints; the name, termios and
        // window size pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned here alone.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the terminal"));
        cmd.stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: only async-signal-safe calls between fork and exec: a new session, then the
        // terminal (now stdin) becomes its controlling terminal, so Ctrl-C reaches the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start the program in a terminal");
        drop(slave);
        let master = std::fs::File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup the terminal");
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the last holder of the terminal's other side has gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            child,
            master,
            output,
        }
    }

    /// Everything the program printed so far (the terminal's `\r\n` as `\n`).
    pub fn output(&self) -> String {
        let bytes = self.output.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    }

    /// Waits until the output contains `needle`; the output so far.
    pub async fn expect(&self, needle: &str, within: Duration) -> String {
        let what = format!("{needle:?} in the terminal");
        eventually(within, &what, || async {
            let out = self.output();
            out.contains(needle).then_some(out)
        })
        .await
    }

    /// Types `bytes` into the terminal.
    pub fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the terminal");
    }

    /// Types Ctrl-C.
    pub fn interrupt(&mut self) {
        self.type_in(b"\x03");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the program to exit, at most `within`.
    pub async fn exit(&mut self, within: Duration) -> ExitStatus {
        let child = &mut self.child;
        eventually(within, "the program to exit", || {
            let done = child.try_wait().expect("wait for the program");
            async move { done }
        })
        .await
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
