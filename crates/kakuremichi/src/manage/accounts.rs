//! `kakuremichi users list|create|delete` (admins) and `kakuremichi tokens list|create|delete`
//! (your own personal API tokens).

use super::{cell, find_id, list_table, refused, Call};
use crate::exit::Exit;
use clap::{Args, Subcommand};
use kakuremichi_client::{Client, Method};
use serde_json::json;

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Every user (admins only).
    List(Call),
    /// Make a user with a password (admins only). The password is read from
    /// KAKUREMICHI_NEW_PASSWORD, never from the command line (it would show in `ps`).
    Create(CreateUser),
    /// Delete a user: their sessions and tokens end at once.
    Delete(OneUser),
}

#[derive(Args)]
pub struct CreateUser {
    /// The user's e-mail address (their login).
    email: String,
    /// Make them an admin.
    #[arg(long)]
    admin: bool,
    #[command(flatten)]
    call: Call,
}

#[derive(Args)]
pub struct OneUser {
    /// The user's e-mail or id.
    user: String,
    #[command(flatten)]
    call: Call,
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Your personal API tokens (the secrets are never shown again).
    List(Call),
    /// Make a personal API token for a script; it is printed once.
    Create(CreateToken),
    /// Revoke one of your tokens (by name or id).
    Delete(OneToken),
}

#[derive(Args)]
pub struct CreateToken {
    /// What it is for, e.g. backup-script.
    name: String,
    #[command(flatten)]
    call: Call,
}

#[derive(Args)]
pub struct OneToken {
    /// The token's name or id.
    token: String,
    #[command(flatten)]
    call: Call,
}

pub async fn users(command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::List(call) => {
            let list = call
                .client()?
                .users()
                .await
                .map_err(|e| refused(e, "listing the users"))?;
            let columns = (
                ["ID", "EMAIL", "ADMIN", "VERIFIED", "CREATED"],
                ["id", "email", "is_admin", "email_verified", "created_at"],
            );
            call.print(&list, |l| list_table(l, &columns.0, &columns.1));
        }
        UsersCommand::Create(c) => {
            let password = std::env::var("KAKUREMICHI_NEW_PASSWORD").unwrap_or_default();
            if password.is_empty() {
                return Err(Exit::usage(
                    "set KAKUREMICHI_NEW_PASSWORD to the new user's password (at least 10 characters)",
                )
                .into());
            }
            let body = json!({"email": c.email, "password": password, "is_admin": c.admin});
            let created = c
                .call
                .client()?
                .call(Method::POST, "users", Some(&body))
                .await
                .map_err(|e| refused(e, "creating the user"))?;
            c.call.print(&created, |u| {
                format!(
                    "Created user {} (id {}).",
                    cell(&u["email"]),
                    cell(&u["id"])
                )
            });
        }
        UsersCommand::Delete(one) => {
            let client = one.call.client()?;
            let list = client
                .users()
                .await
                .map_err(|e| refused(e, "listing the users"))?;
            let id = find_id(&list, "email", &one.user, "user")?;
            delete(&client, &format!("users/{id}"), "deleting the user").await?;
            let answer = json!({ "deleted": id });
            one.call
                .print(&answer, |_| format!("Deleted user {}.", one.user));
        }
    }
    Ok(())
}

pub async fn tokens(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::List(call) => {
            let list = call
                .client()?
                .call(Method::GET, "tokens", None)
                .await
                .map_err(|e| refused(e, "listing your tokens"))?;
            let columns = (
                ["ID", "NAME", "CREATED", "LAST USED"],
                ["id", "name", "created_at", "last_used_at"],
            );
            call.print(&list, |l| list_table(l, &columns.0, &columns.1));
        }
        TokensCommand::Create(c) => {
            let body = json!({ "name": c.name });
            let created = c
                .call
                .client()?
                .call(Method::POST, "tokens", Some(&body))
                .await
                .map_err(|e| refused(e, "creating the token"))?;
            c.call.print(&created, |t| {
                format!(
                    "Token {} (id {}), shown only now:\n\n  {}\n\nSend it as Authorization: Bearer <token>, \
                     or set KAKUREMICHI_TOKEN for this command line.",
                    cell(&t["name"]),
                    cell(&t["id"]),
                    cell(&t["token"])
                )
            });
        }
        TokensCommand::Delete(one) => {
            let client = one.call.client()?;
            let list = client
                .call(Method::GET, "tokens", None)
                .await
                .map_err(|e| refused(e, "listing your tokens"))?;
            let id = find_id(&list, "name", &one.token, "token")?;
            delete(&client, &format!("tokens/{id}"), "revoking the token").await?;
            let answer = json!({ "deleted": id });
            one.call
                .print(&answer, |_| format!("Revoked token {}.", one.token));
        }
    }
    Ok(())
}

async fn delete(client: &Client, path: &str, doing: &str) -> anyhow::Result<()> {
    client
        .call(Method::DELETE, path, None)
        .await
        .map(drop)
        .map_err(|e| refused(e, doing))
}
