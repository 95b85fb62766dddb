//! The command line signed in to a Control: `kakuremichi login` (a device-code sign-in, approved
//! in the browser), `kakuremichi logout`, and the profiles they keep — one per Control, in
//! `<config dir>/profiles.json` (mode 0600): its URL, the personal API token and whose it is.
//!
//! Every command that calls the API takes [`ApiArgs`]: `KAKUREMICHI_TOKEN` with `--control-url`
//! (for CI, no profile needed), else `--profile NAME`, else the profile of the last login.

use crate::exit::Exit;
use crate::user_config;
use anyhow::{bail, Context};
use clap::Args;
use kakuremichi_client::{Client, DevicePoll};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file of profiles in the config directory.
const PROFILES_FILE: &str = "profiles.json";
/// Largest profiles file read (a few profiles are a few hundred bytes).
const MAX_PROFILES_BYTES: u64 = 1 << 20;

/// What every command that talks to Control reads on this machine.
#[derive(Args, Clone, Debug)]
pub struct Local {
    /// A CA certificate (PEM) to trust besides the public ones, e.g. Control's internal CA.
    #[arg(long, env = "KAKUREMICHI_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Where profiles are kept. Default: $XDG_CONFIG_HOME/kakuremichi (or ~/.config/kakuremichi).
    #[arg(long, env = "KAKUREMICHI_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,
}

impl Local {
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        http(self.ca_file.as_deref())
    }

    /// The profiles file and what it holds (nothing yet when it does not exist).
    fn profiles(&self) -> anyhow::Result<(PathBuf, Profiles)> {
        let path = Profiles::path(self.config_dir.as_deref())?;
        let profiles = Profiles::load(&path)?;
        Ok((path, profiles))
    }
}

/// Where the API is and who calls it; flattened into every command that calls the API.
#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// Control's URL. With KAKUREMICHI_TOKEN, no profile is needed (CI).
    #[arg(long, env = "KAKUREMICHI_CONTROL_URL", value_name = "URL")]
    control_url: Option<String>,
    /// The profile to use (see `kakuremichi login --profile`). Default: the last one logged in.
    #[arg(long, env = "KAKUREMICHI_PROFILE", value_name = "NAME")]
    profile: Option<String>,
    #[command(flatten)]
    local: Local,
}

#[derive(Args)]
pub struct LoginArgs {
    /// Control's URL, e.g. https://control.example.com. Default: the URL of --profile, or of the
    /// last login.
    #[arg(value_name = "CONTROL_URL")]
    url: Option<String>,
    /// The name this login is kept under. Default: the Control's host name (and port).
    #[arg(long, env = "KAKUREMICHI_PROFILE", value_name = "NAME")]
    profile: Option<String>,
    /// Only print the link; do not try to open a browser (SSH sessions).
    #[arg(long)]
    no_browser: bool,
    /// The name of the personal API token made for this machine (shown on the approval page and
    /// in your profile). Default: "kakuremichi CLI on <host name>".
    #[arg(long, value_name = "NAME")]
    token_name: Option<String>,
    #[command(flatten)]
    local: Local,
}

#[derive(Args)]
pub struct LogoutArgs {
    /// The profile to log out of. Default: the last one logged in.
    #[arg(long, env = "KAKUREMICHI_PROFILE", value_name = "NAME")]
    profile: Option<String>,
    #[command(flatten)]
    local: Local,
}

/// One Control signed in to.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct Profile {
    control_url: String,
    token: String,
    token_id: i64,
    email: String,
}

/// `profiles.json`.
#[derive(Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Profiles {
    /// The profile used when none is named.
    current: Option<String>,
    profiles: BTreeMap<String, Profile>,
}

impl Profiles {
    fn path(config_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
        Ok(user_config::dir(config_dir)?.join(PROFILES_FILE))
    }

    fn load(path: &Path) -> anyhow::Result<Profiles> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Profiles::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(file, MAX_PROFILES_BYTES),
            &mut text,
        )
        .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; delete it and run `kakuremichi login` again",
                path.display()
            )
        })
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        user_config::write_private(path, &text)
    }

    /// The named profile, else the current one: its name and contents.
    fn pick(&self, name: Option<&str>) -> Option<(String, &Profile)> {
        let name = name.or(self.current.as_deref())?;
        self.profiles.get(name).map(|p| (name.to_string(), p))
    }
}

/// An HTTP client for Control: timeouts, no redirects followed, `ca_file` trusted too.
fn http(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
        http = http.add_root_certificate(cert);
    }
    Ok(http.build()?)
}

/// `url` checked and without a trailing slash: `http(s)://host[:port][/path]`.
fn control_url(url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    match parsed {
        Some(u) if u.query().is_none() && u.fragment().is_none() => {
            Ok(u.as_str().trim_end_matches('/').to_string())
        }
        _ => Err(Exit::usage(format!(
            "{url:?} is not a Control URL; give one like https://control.example.com"
        ))
        .into()),
    }
}

/// The default profile name of a Control: its host name and port, as in its URL.
fn profile_name(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "default".to_string())
}

impl ApiArgs {
    /// A client of Control, signed in: by KAKUREMICHI_TOKEN and --control-url, else by a profile.
    pub fn client(&self) -> anyhow::Result<Client> {
        let http = self.local.http()?;
        if let Some(token) = std::env::var("KAKUREMICHI_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
        {
            let Some(url) = &self.control_url else {
                bail!(Exit::usage(
                    "KAKUREMICHI_TOKEN is set: give Control's URL too (--control-url or KAKUREMICHI_CONTROL_URL)"
                ));
            };
            return Ok(Client::with_http(http, control_url(url)?).with_token(token));
        }
        let (path, profiles) = self.local.profiles()?;
        let Some((name, profile)) = profiles.pick(self.profile.as_deref()) else {
            let what = match &self.profile {
                Some(p) => format!("no profile {p:?} in {}", path.display()),
                None => "not logged in".to_string(),
            };
            bail!(Exit::usage(format!(
                "{what}: run `kakuremichi login <CONTROL_URL>`, or set KAKUREMICHI_TOKEN and --control-url"
            )));
        };
        let url = match &self.control_url {
            Some(u) if control_url(u)? != profile.control_url => bail!(Exit::usage(format!(
                "--control-url {u} is not the URL of profile {name:?} ({}); log in to it first",
                profile.control_url
            ))),
            _ => profile.control_url.clone(),
        };
        Ok(Client::with_http(http, url).with_token(profile.token.clone()))
    }
}

/// `kakuremichi login`.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let (path, mut profiles) = args.local.profiles()?;
    let url = match (&args.url, profiles.pick(args.profile.as_deref())) {
        (Some(u), _) => control_url(u)?,
        (None, Some((_, p))) => p.control_url.clone(),
        (None, None) => bail!(Exit::usage(
            "which Control? run `kakuremichi login https://control.example.com`"
        )),
    };
    let name = args.profile.clone().unwrap_or_else(|| profile_name(&url));
    let client = Client::with_http(args.local.http()?, url.clone());
    let token_name = args.token_name.clone().unwrap_or_else(|| {
        let host = hostname().unwrap_or_else(|| "this machine".to_string());
        format!("kakuremichi CLI on {host}")
    });
    let started = client
        .start_device_login(&token_name)
        .await
        .with_context(|| format!("starting a sign-in at {url}"))?;
    let link = client.url(&started.verification_path_complete);
    eprintln!(
        "To sign in, open this link in a browser where you are signed in to Control:\n\n  {link}\n\n\
         and approve the code  {}  (it expires in {} minutes).",
        started.user_code,
        started.expires_in / 60
    );
    if !args.no_browser {
        user_config::open_in_browser(&link);
    }
    let deadline = Instant::now() + Duration::from_secs(started.expires_in);
    let mut interval = Duration::from_secs(started.interval.max(1));
    let issued = loop {
        if Instant::now() >= deadline {
            bail!(
                "the sign-in was not approved within {} minutes; run `kakuremichi login` again",
                started.expires_in / 60
            );
        }
        tokio::time::sleep(interval).await;
        match client.poll_device_login(&started.device_code).await {
            Ok(DevicePoll::Approved(token)) => break token,
            Ok(DevicePoll::Pending) => {}
            Ok(DevicePoll::SlowDown) => interval += Duration::from_secs(1),
            Err(kakuremichi_client::Error::Api { code, .. }) if code == "access_denied" => {
                bail!("the sign-in was denied in the browser; nothing was saved")
            }
            Err(kakuremichi_client::Error::Api { code, .. }) if code == "expired_token" => {
                bail!("the sign-in expired; run `kakuremichi login` again")
            }
            Err(e) => return Err(e).context("waiting for the sign-in"),
        }
    };
    let replaced = profiles.profiles.insert(
        name.clone(),
        Profile {
            control_url: url.clone(),
            token: issued.token.clone(),
            token_id: issued.token_id,
            email: issued.user.email.clone(),
        },
    );
    profiles.current = Some(name.clone());
    profiles.save(&path)?;
    if let Some(old) = replaced {
        // The token this login replaces is of no use any more.
        let old_client =
            Client::with_http(args.local.http()?, old.control_url).with_token(old.token);
        let _ = old_client.delete_token(old.token_id).await;
    }
    println!(
        "Logged in to {url} as {} (profile {name:?}, kept in {}).",
        issued.user.email,
        path.display()
    );
    Ok(())
}

/// `kakuremichi logout`: revokes the profile's token on Control and forgets the profile.
pub async fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let (path, mut profiles) = args.local.profiles()?;
    let Some((name, profile)) = profiles.pick(args.profile.as_deref()) else {
        bail!(Exit::usage(match &args.profile {
            Some(p) => format!("no profile {p:?} in {}", path.display()),
            None => "not logged in".to_string(),
        }));
    };
    let profile = profile.clone();
    let client = Client::with_http(args.local.http()?, profile.control_url.clone())
        .with_token(profile.token.clone());
    let revoked = match client.delete_token(profile.token_id).await {
        Ok(()) => Ok(()),
        // Revoked already (in the UI, or by another logout): nothing left to do there.
        Err(e) if e.status() == Some(reqwest::StatusCode::UNAUTHORIZED) => Ok(()),
        Err(e) => Err(e),
    };
    profiles.profiles.remove(&name);
    if profiles.current.as_deref() == Some(&name) {
        profiles.current = None;
    }
    profiles.save(&path)?;
    match revoked {
        Ok(()) => {
            println!("Logged out of {} (profile {name:?}); its token is revoked.", profile.control_url);
            Ok(())
        }
        Err(e) => bail!(
            "forgot profile {name:?}, but could not revoke its token on {} ({e}); revoke it on your profile page there",
            profile.control_url
        ),
    }
}

/// This machine's name, for the token's default name.
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.chars().take(40).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_urls_are_checked_and_profiles_named_after_them() {
        assert_eq!(
            control_url("https://control.example.com/").unwrap(),
            "https://control.example.com"
        );
        assert_eq!(
            profile_name("https://control.example.com"),
            "control.example.com"
        );
        assert_eq!(profile_name("http://127.0.0.1:8780"), "127.0.0.1:8780");
        for bad in [
            "control.example.com",
            "ftp://x",
            "https://x/?a=b",
            "",
            "http://",
        ] {
            assert!(control_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profiles_round_trip_and_the_current_one_is_picked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(PROFILES_FILE);
        assert!(Profiles::load(&path).unwrap().pick(None).is_none());
        let mut p = Profiles::default();
        let profile = Profile {
            control_url: "https://c.example".into(),
            token: "kmt_x".into(),
            token_id: 3,
            email: "a@example.com".into(),
        };
        p.profiles.insert("c.example".into(), profile);
        p.current = Some("c.example".into());
        p.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Profiles::load(&path).unwrap();
        assert_eq!(back.pick(None).unwrap().1.token_id, 3);
        assert!(back.pick(Some("other")).is_none());
        std::fs::write(&path, "{not json").unwrap();
        let err = Profiles::load(&path).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }
}
