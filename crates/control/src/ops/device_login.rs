//! `kakuremichi login`: a device-code sign-in (RFC 8628, as `gh auth login`). The CLI starts one
//! anonymously and gets a secret device code plus a short user code; the user opens
//! `/device?code=<user code>` in a browser where they are signed in and approves; the CLI's next
//! poll receives a new personal API token, once.
//!
//! Anonymous starts are bounded in the database (so across replicas): at most
//! [`MAX_PER_CLIENT`] pending from one client address and [`MAX_PENDING`] in all, each living
//! [`LIFETIME`]; a device code may be polled once a second.

use super::audit;
use crate::app::AppState;
use crate::error::ApiError;
use crate::store::{DevicePoll, NewDeviceLogin, StartRefused, TokenRow, UserRow};
use crate::{secrets, validate};
use rand::Rng as _;
use serde_json::json;

/// How long a started sign-in waits for approval.
pub const LIFETIME: time::Duration = time::Duration::minutes(10);
/// Seconds the CLI should wait between polls.
pub const POLL_INTERVAL_SECS: u64 = 1;
/// Pending sign-ins from one client address.
pub const MAX_PER_CLIENT: i64 = 5;
/// Pending sign-ins in all.
pub const MAX_PENDING: i64 = 1_000;
/// Letters of user codes: no vowels (no words), none that look alike.
const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Letters in a user code, shown as `XXXX-XXXX` (20^8 ≈ 2.6 × 10^10 codes).
const CODE_LETTERS: usize = 8;
/// The prefix of device codes (a secret of the CLI's, never shown to the user).
const DEVICE_CODE_PREFIX: &str = "kmd_";
/// The token's name when the CLI names none.
const DEFAULT_NAME: &str = "kakuremichi CLI";

/// A started sign-in, as the CLI receives it.
pub struct Started {
    pub device_code: String,
    /// `XXXX-XXXX`.
    pub user_code: String,
}

/// Starts a sign-in for a token to be called `name`.
pub async fn start(
    state: &AppState,
    name: Option<&str>,
    client_ip: Option<&str>,
) -> Result<Started, ApiError> {
    let name = match name {
        Some(n) => validate::name(n).map_err(|e| ApiError::bad_request(e.0))?,
        None => DEFAULT_NAME.to_string(),
    };
    let device_code = secrets::generate(DEVICE_CODE_PREFIX);
    let device_hash = secrets::hash(&device_code);
    for _ in 0..4 {
        let letters = random_letters();
        let new = NewDeviceLogin {
            device_hash: &device_hash,
            user_code: &letters,
            name: &name,
            client_ip,
            lifetime: LIFETIME,
            max_pending: MAX_PENDING,
            max_per_client: MAX_PER_CLIENT,
        };
        match state.store.start_device_login(&new).await? {
            Ok(()) => {
                tracing::info!(name = %name, client = client_ip.unwrap_or("-"),
                    "command-line sign-in started; waiting for a user to approve it");
                return Ok(Started {
                    device_code,
                    user_code: show(&letters),
                });
            }
            Err(StartRefused::CodeTaken) => continue,
            Err(StartRefused::TooManyFromClient) => {
                let wait = u64::try_from(LIFETIME.whole_seconds()).unwrap_or(600);
                return Err(ApiError::too_many(
                    wait,
                    "too many command-line sign-ins pending from this address",
                ));
            }
            Err(StartRefused::Full) => {
                return Err(ApiError::busy(
                    60,
                    "too many command-line sign-ins pending on this Control",
                ))
            }
        }
    }
    Err(ApiError::internal())
}

/// The letters of a user code as typed or linked (`bcdf-ghjk`, `BCDFGHJK`), or `None` when it
/// cannot be one.
pub fn normalize(code: &str) -> Option<String> {
    let letters: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let ok = letters.len() == CODE_LETTERS && letters.bytes().all(|b| ALPHABET.contains(&b));
    ok.then_some(letters)
}

/// `BCDFGHJK` as `BCDF-GHJK`.
pub fn show(letters: &str) -> String {
    let (a, b) = letters.split_at(letters.len() / 2);
    format!("{a}-{b}")
}

fn random_letters() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..CODE_LETTERS)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// Approves or denies the pending sign-in with this user code, as `user`.
pub async fn decide(
    state: &AppState,
    user: &UserRow,
    code: &str,
    approve: bool,
) -> Result<(), ApiError> {
    let letters = normalize(code).ok_or_else(unknown_code)?;
    if !state
        .store
        .decide_device_login(&letters, user.id, approve)
        .await?
    {
        return Err(unknown_code());
    }
    let action = if approve {
        "device_login.approve"
    } else {
        "device_login.deny"
    };
    audit(
        state,
        Some(user),
        action,
        format!("device:{}", show(&letters)),
        json!({}),
    )
    .await;
    Ok(())
}

pub fn unknown_code() -> ApiError {
    ApiError::not_found(
        "sign-in code (it may have expired or been used; run `kakuremichi login` again)",
    )
}

/// A token handed to the CLI.
pub struct Issued {
    pub token: String,
    pub row: TokenRow,
    pub user: UserRow,
}

/// One poll of the CLI: the token once approved, else RFC 8628's errors (400 with the codes
/// `authorization_pending`, `slow_down`, `access_denied`, `expired_token`).
pub async fn poll(state: &AppState, device_code: &str) -> Result<Issued, ApiError> {
    let token = secrets::generate(secrets::API_TOKEN_PREFIX);
    let polled = state
        .store
        .poll_device_login(&secrets::hash(device_code), &secrets::hash(&token))
        .await?;
    let refused = |code, message: &str| ApiError::bad_request(message).with_code(code);
    match polled {
        DevicePoll::Approved {
            user_id,
            token: row,
        } => {
            let user = state.store.get_user(user_id).await?;
            let target = format!("token:{} {}", row.id, row.name);
            audit(
                state,
                Some(&user),
                "token.create",
                target,
                json!({"via": "device login"}),
            )
            .await;
            Ok(Issued { token, row, user })
        }
        DevicePoll::Pending => Err(refused(
            "authorization_pending",
            "waiting for the sign-in to be approved in the browser",
        )),
        DevicePoll::SlowDown => Err(refused(
            "slow_down",
            "polled too often; wait the interval between polls",
        )),
        DevicePoll::Denied => Err(refused("access_denied", "the sign-in was denied")),
        DevicePoll::Gone => Err(refused(
            "expired_token",
            "this sign-in expired or was already used; run `kakuremichi login` again",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_read_as_typed_and_nothing_else() {
        assert_eq!(normalize("bcdf-ghjk").as_deref(), Some("BCDFGHJK"));
        assert_eq!(normalize(" BCDF GHJK").as_deref(), Some("BCDFGHJK"));
        for bad in [
            "",
            "BCDF-GHJ",
            "BCDF-GHJKL",
            "ABCD-GHJK",
            "BCDF-GHJ1",
            "ＢCDF-GHJK",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
        let code = show(&random_letters());
        assert_eq!(code.len(), 9);
        assert!(normalize(&code).is_some(), "{code}");
    }
}
