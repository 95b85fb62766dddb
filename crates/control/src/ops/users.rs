//! Accounts: first-run setup, registration (invitation or open), and the admin's user management.

use super::{audit, check_password, hash_password, require_admin};
use crate::app::AppState;
use crate::error::{about, ApiError};
use crate::store::{UserRow, OPEN_REGISTRATION};
use crate::{secrets, validate};
use serde_json::json;

/// How long an invitation link stays valid.
const INVITATION_VALID: time::Duration = time::Duration::days(7);

fn email(input: &str) -> Result<String, ApiError> {
    validate::email(input).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// First run: creates the admin while no user exists; afterwards 409.
pub async fn setup(
    state: &AppState,
    email_in: &str,
    password: String,
) -> Result<UserRow, ApiError> {
    let email = email(email_in)?;
    check_password(&password)?;
    let already = || {
        ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "Control is already set up; log in instead",
        )
    };
    // Checked before hashing: once set up, this anonymous route costs no Argon2 at all.
    if state.store.count_users().await? > 0 {
        return Err(already());
    }
    let hash = hash_password(state, password).await?;
    let user = state
        .store
        .bootstrap_admin(&email, &hash)
        .await?
        .ok_or_else(already)?;
    audit(state, Some(&user), "user.setup", target(&user), json!({})).await;
    Ok(user)
}

/// Registration: with an invitation token, or without one while open registration is on.
pub async fn register(
    state: &AppState,
    invitation: Option<&str>,
    email_in: &str,
    password: String,
) -> Result<UserRow, ApiError> {
    check_password(&password)?;
    // Every check that needs no Argon2 comes first: anonymous callers only reach the hashing
    // pool with a valid invitation, or a free address while registration is open.
    let user = match invitation.filter(|t| !t.is_empty()) {
        Some(token) => {
            let token_hash = secrets::hash(token);
            if state.store.invitation(&token_hash).await?.is_none() {
                return Err(ApiError::bad_request(
                    "this invitation link is unknown, used or expired; ask an admin for a new one",
                ));
            }
            let hash = hash_password(state, password).await?;
            state.store.redeem_invitation(&token_hash, &hash).await?
        }
        None => {
            if !state.store.open_registration().await? {
                return Err(ApiError::forbidden(
                    "registration is by invitation only; ask an admin for an invitation link",
                ));
            }
            let email = email(email_in)?;
            if state.store.user_by_email(&email).await?.is_some() {
                return Err(taken(&email));
            }
            let hash = hash_password(state, password).await?;
            // Anyone can type any address: unverified until an admin says otherwise.
            state.store.create_user(&email, &hash, false, false).await?
        }
    };
    audit(
        state,
        Some(&user),
        "user.register",
        target(&user),
        json!({}),
    )
    .await;
    Ok(user)
}

/// Admin: creates an account with a password the admin passes on.
pub async fn create(
    state: &AppState,
    admin: &UserRow,
    email_in: &str,
    password: String,
    is_admin: bool,
) -> Result<UserRow, ApiError> {
    require_admin(admin, "create users")?;
    let email = email(email_in)?;
    check_password(&password)?;
    if state.store.user_by_email(&email).await?.is_some() {
        return Err(taken(&email));
    }
    let hash = hash_password(state, password).await?;
    let user = state
        .store
        .create_user(&email, &hash, is_admin, true)
        .await?;
    let detail = json!({"is_admin": is_admin});
    audit(state, Some(admin), "user.create", target(&user), detail).await;
    Ok(user)
}

/// Admin: an invitation for `email`; returns the token for the link (shown once).
pub async fn invite(
    state: &AppState,
    admin: &UserRow,
    email_in: &str,
    is_admin: bool,
) -> Result<String, ApiError> {
    require_admin(admin, "invite users")?;
    let email = email(email_in)?;
    if state.store.user_by_email(&email).await?.is_some() {
        return Err(taken(&email));
    }
    let token = secrets::generate("kmi_");
    state
        .store
        .create_invitation(
            &secrets::hash(&token),
            &email,
            is_admin,
            admin.id,
            INVITATION_VALID,
        )
        .await?;
    let detail = json!({"is_admin": is_admin});
    audit(
        state,
        Some(admin),
        "user.invite",
        format!("invitation {email}"),
        detail,
    )
    .await;
    Ok(token)
}

/// Admin: grants or removes admin.
pub async fn set_admin(
    state: &AppState,
    admin: &UserRow,
    id: i64,
    is_admin: bool,
) -> Result<UserRow, ApiError> {
    require_admin(admin, "change roles")?;
    let user = state
        .store
        .set_admin(id, is_admin)
        .await
        .map_err(about("user"))?;
    let detail = json!({"is_admin": is_admin});
    audit(state, Some(admin), "user.role", target(&user), detail).await;
    Ok(user)
}

/// Admin: marks an account's e-mail address verified (allow-lists then admit it) or not.
pub async fn set_email_verified(
    state: &AppState,
    admin: &UserRow,
    id: i64,
    verified: bool,
) -> Result<UserRow, ApiError> {
    require_admin(admin, "verify accounts")?;
    let user = state
        .store
        .set_email_verified(id, verified)
        .await
        .map_err(about("user"))?;
    let detail = json!({"email_verified": verified});
    audit(state, Some(admin), "user.verify", target(&user), detail).await;
    Ok(user)
}

/// Admin: sets a new password for someone (their sessions end).
pub async fn reset_password(
    state: &AppState,
    admin: &UserRow,
    id: i64,
    password: String,
) -> Result<(), ApiError> {
    require_admin(admin, "reset passwords")?;
    check_password(&password)?;
    let user = state.store.get_user(id).await.map_err(about("user"))?;
    let hash = hash_password(state, password).await?;
    state
        .store
        .set_password(id, &hash)
        .await
        .map_err(about("user"))?;
    audit(
        state,
        Some(admin),
        "user.reset_password",
        target(&user),
        json!({}),
    )
    .await;
    Ok(())
}

/// Anyone: changes their own password after proving the current one; every session ends.
pub async fn change_own_password(
    state: &AppState,
    user: &UserRow,
    current: String,
    new: String,
) -> Result<(), ApiError> {
    check_password(&new)?;
    let phc = user.password_hash.clone();
    if !state.passwords.verify(current, phc).await? {
        return Err(ApiError::bad_request("the current password is not right"));
    }
    let hash = hash_password(state, new).await?;
    state.store.set_password(user.id, &hash).await?;
    audit(
        state,
        Some(user),
        "user.change_password",
        target(user),
        json!({}),
    )
    .await;
    Ok(())
}

pub async fn delete(state: &AppState, admin: &UserRow, id: i64) -> Result<(), ApiError> {
    require_admin(admin, "delete users")?;
    let user = state.store.get_user(id).await.map_err(about("user"))?;
    state.store.delete_user(id).await.map_err(about("user"))?;
    audit(state, Some(admin), "user.delete", target(&user), json!({})).await;
    Ok(())
}

/// Admin: turns open registration on or off.
pub async fn set_open_registration(
    state: &AppState,
    admin: &UserRow,
    open: bool,
) -> Result<(), ApiError> {
    require_admin(admin, "change settings")?;
    state
        .store
        .set_setting(OPEN_REGISTRATION, if open { "true" } else { "false" })
        .await?;
    let detail = json!({"open_registration": open});
    audit(
        state,
        Some(admin),
        "settings.update",
        "settings".into(),
        detail,
    )
    .await;
    Ok(())
}

/// 409 for an address that already has an account.
fn taken(email: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        format!("a user with the e-mail {email} already exists"),
    )
}

fn target(u: &UserRow) -> String {
    format!("user:{} {}", u.id, u.email)
}
