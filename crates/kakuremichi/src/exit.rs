//! How a command ends with an exit status of its own: return [`Exit`] as the error; `main`
//! prints its message (if any) on stderr and exits with its code.

/// Ends the program with `code` after printing `message` (if any) on stderr.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    /// Bad input from the user (a flag, an argument, a missing login): status 2, as clap's own
    /// usage errors, so scripts tell it from a failure of Control or the network.
    pub fn usage(message: impl Into<String>) -> Exit {
        Exit {
            code: 2,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}
