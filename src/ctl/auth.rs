//! `aetherctl auth`: tokens for development and tests. `mint` signs an HS256 token with a
//! shared secret (the node's `[[auth.keys]]` entry with `hmac_secret_file` verifies it).

use super::output::outln;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::failover::Failover;
use super::output::{Output, Printer};
use super::CallKind;
use crate::auth::{mint_hs256, read_hmac_secret, MintRequest, Role};
use crate::proto::aetherops::v1::admin_client::AdminClient;
use crate::proto::aetherops::v1::{Prefixes, WhoAmIRequest};

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum AuthCmd {
    /// Print an HS256 token signed with a shared secret (development and tests only).
    Mint {
        /// File holding the HMAC secret (at least 32 bytes; one trailing newline is not
        /// part of it).
        #[arg(long)]
        secret_file: PathBuf,
        /// The token's subject (`sub`).
        #[arg(long)]
        sub: String,
        /// A role: reader, writer or admin (repeatable; admin implies writer implies reader).
        #[arg(long = "role", required = true)]
        roles: Vec<Role>,
        /// Confine the token to streams starting with this (repeatable).
        #[arg(long = "stream-prefix")]
        stream_prefixes: Vec<String>,
        /// Confine the token to series starting with this (repeatable).
        #[arg(long = "series-prefix")]
        series_prefixes: Vec<String>,
        /// Lifetime: 30s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Issuer (`iss`): the node's `auth.issuer`.
        #[arg(long, default_value = "aetherops-dev")]
        iss: String,
        /// Audience (`aud`): the node's `auth.audience` (`auth.node_audience` for a
        /// node-plane token).
        #[arg(long, default_value = "aetherops")]
        aud: String,
        /// Key id (`kid`): needed when the node has more than one key.
        #[arg(long)]
        kid: Option<String>,
    },
    /// What the node makes of this aetherctl's token: subject, roles, scopes, expiry.
    Whoami,
}

pub async fn run(
    addr: &str,
    timeout: Duration,
    cmd: AuthCmd,
    printer: &Printer,
) -> anyhow::Result<()> {
    match cmd {
        AuthCmd::Whoami => whoami(addr, timeout, printer).await,
        AuthCmd::Mint {
            secret_file,
            sub,
            roles,
            stream_prefixes,
            series_prefixes,
            ttl,
            iss,
            aud,
            kid,
        } => {
            let ttl_ms = crate::time::parse_duration_ms(&ttl).context("--ttl")?;
            let secret = read_hmac_secret(&secret_file)?;
            let now_secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the system clock is before 1970")?
                .as_secs();
            let req = MintRequest {
                subject: sub,
                roles,
                stream_prefixes,
                series_prefixes,
                issuer: iss,
                audience: aud,
                kid,
                target: None,
                now_secs,
                ttl_secs: ttl_ms / 1000,
            };
            let token = mint_hs256(&secret, &req)
                .with_context(|| format!("minting with {}", secret_file.display()))?;
            match printer.format {
                Output::Text => outln!("{token}"),
                Output::Json => printer.json(&json!({
                    "token": token,
                    "sub": req.subject,
                    "expires_at": req.now_secs + req.ttl_secs,
                })),
            }
            Ok(())
        }
    }
}

async fn whoami(addr: &str, timeout: Duration, printer: &Printer) -> anyhow::Result<()> {
    let nodes = Failover::connect_lazy(addr, timeout)?;
    let me = nodes
        .call(CallKind::Read, |ch| async move {
            Ok(AdminClient::new(super::authed(ch))
                .who_am_i(WhoAmIRequest {})
                .await?
                .into_inner())
        })
        .await?;
    let scope = |p: &Option<Prefixes>| p.as_ref().map(|p| p.prefixes.clone());
    let v = json!({
        "auth": me.auth,
        "subject": me.subject,
        "roles": me.roles,
        "streams": scope(&me.streams),
        "series": scope(&me.series),
        "expires_at": me.expires_at,
    });
    match printer.format {
        Output::Json => printer.json(&v),
        Output::Text if !me.auth => {
            outln!("the node checks no token: every caller is anonymous (authentication off)")
        }
        Output::Text => {
            let show = |p: &Option<Prefixes>| match p {
                None => "all".to_owned(),
                Some(p) => format!("{:?}", p.prefixes),
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let left = me.expires_at.saturating_sub(now);
            outln!("subject: {}", me.subject);
            outln!("roles:   {}", me.roles.join(", "));
            outln!("streams: {}", show(&me.streams));
            outln!("series:  {}", show(&me.series));
            outln!("expires: {} (in {left} s)", me.expires_at);
        }
    }
    Ok(())
}
