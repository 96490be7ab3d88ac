//! `glia tenants …` and `glia keys …`: tenant and key administration over
//! the HTTP API (an admin key is needed).

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Server, check, print_json};

#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    command: TenantsCommand,
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// List tenants.
    #[command(alias = "ls")]
    List,
    /// Create a tenant.
    Create { name: String },
    /// Show a tenant, its quotas and what it holds.
    Show { tenant: String },
    /// Set a tenant's quotas, e.g. `max_concurrency=10 monthly_spend_cap=5000000`
    /// (`name=default` returns one to the platform default).
    Quotas {
        tenant: String,
        #[arg(required = true)]
        quotas: Vec<String>,
    },
    /// Delete a tenant that owns no functions or models.
    #[command(alias = "rm")]
    Delete { tenant: String },
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    #[command(flatten)]
    server: Server,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List a tenant's keys (never the keys themselves).
    #[command(alias = "ls")]
    List { tenant: String },
    /// Create a key; it is printed once.
    Create {
        tenant: String,
        /// Scopes: admin, deploy, invoke, read (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Revoke a key.
    #[command(alias = "rm")]
    Revoke {
        tenant: String,
        /// The key's id (`key_…`), as `glia keys list` shows it.
        id: String,
    },
}

/// The value at a JSON pointer, or null.
fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    value.pointer(pointer).unwrap_or(&NULL)
}

fn seg(s: &str) -> String {
    s.replace('/', "%2F")
}

pub async fn tenants(args: TenantsArgs) -> anyhow::Result<()> {
    let server = &args.server;
    let http = server.http()?;
    let value = match &args.command {
        TenantsCommand::List => {
            let value = check(http.get(server.endpoint("/v1/tenants")).send().await?).await?;
            if !server.json() {
                println!(
                    "{:<22} {:<24} {:>9} {:>7}",
                    "ID", "NAME", "FUNCTIONS", "MODELS"
                );
                for t in at(&value, "/tenants").as_array().into_iter().flatten() {
                    println!(
                        "{:<22} {:<24} {:>9} {:>7}",
                        at(t, "/id").as_str().unwrap_or(""),
                        at(t, "/name").as_str().unwrap_or(""),
                        at(t, "/usage/functions").as_u64().unwrap_or(0),
                        at(t, "/usage/models").as_u64().unwrap_or(0)
                    );
                }
                return Ok(());
            }
            value
        }
        TenantsCommand::Create { name } => {
            check(
                http.post(server.endpoint("/v1/tenants"))
                    .json(&json!({ "name": name }))
                    .send()
                    .await?,
            )
            .await?
        }
        TenantsCommand::Show { tenant } => {
            check(
                http.get(server.endpoint(&format!("/v1/tenants/{}", seg(tenant))))
                    .send()
                    .await?,
            )
            .await?
        }
        TenantsCommand::Quotas { tenant, quotas } => {
            let mut patch = serde_json::Map::new();
            for q in quotas {
                let (k, v) = q
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("`{q}`: write quotas as name=value"))?;
                let value = if v == "default" {
                    Value::Null
                } else {
                    json!(v.parse::<u64>().map_err(|_| anyhow::anyhow!(
                        "`{q}`: the value must be a number or `default`"
                    ))?)
                };
                patch.insert(k.to_string(), value);
            }
            check(
                http.patch(server.endpoint(&format!("/v1/tenants/{}", seg(tenant))))
                    .json(&json!({ "quotas": patch }))
                    .send()
                    .await?,
            )
            .await?
        }
        TenantsCommand::Delete { tenant } => {
            check(
                http.delete(server.endpoint(&format!("/v1/tenants/{}", seg(tenant))))
                    .send()
                    .await?,
            )
            .await?
        }
    };
    print_json(&value);
    Ok(())
}

pub async fn keys(args: KeysArgs) -> anyhow::Result<()> {
    let server = &args.server;
    let http = server.http()?;
    let value = match &args.command {
        KeysCommand::List { tenant } => {
            let value = check(
                http.get(server.endpoint(&format!("/v1/tenants/{}/keys", seg(tenant))))
                    .send()
                    .await?,
            )
            .await?;
            if !server.json() {
                println!("{:<22} {:<14} SCOPES", "ID", "PREFIX");
                for k in at(&value, "/keys").as_array().into_iter().flatten() {
                    let scopes: Vec<&str> = at(k, "/scopes")
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<22} {:<14} {}",
                        at(k, "/id").as_str().unwrap_or(""),
                        at(k, "/prefix").as_str().unwrap_or(""),
                        scopes.join(",")
                    );
                }
                return Ok(());
            }
            value
        }
        KeysCommand::Create { tenant, scopes } => {
            let value = check(
                http.post(server.endpoint(&format!("/v1/tenants/{}/keys", seg(tenant))))
                    .json(&json!({ "scopes": scopes }))
                    .send()
                    .await?,
            )
            .await?;
            if !server.json() {
                eprintln!(
                    "key {} for tenant {} (shown once; keep it safe):",
                    at(&value, "/id").as_str().unwrap_or(""),
                    at(&value, "/tenant").as_str().unwrap_or("")
                );
                println!("{}", at(&value, "/key").as_str().unwrap_or(""));
                return Ok(());
            }
            value
        }
        KeysCommand::Revoke { tenant, id } => {
            check(
                http.delete(server.endpoint(&format!(
                    "/v1/tenants/{}/keys/{}",
                    seg(tenant),
                    seg(id)
                )))
                .send()
                .await?,
            )
            .await?
        }
    };
    print_json(&value);
    Ok(())
}
