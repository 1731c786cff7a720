//! `issuer-worker campaigns`: the api's admin endpoints from the command
//! line. The api owns campaigns (it writes the row and loads the gate's
//! meta in one step), so this only talks HTTP to it; every figure shown is
//! the api's admin reply (docs/CONTRACT.md, "Admin").

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use common::ids::CampaignId;
use common::settings::Settings;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminError, EXIT_CODES, EXIT_OK, Output, print_json, print_text};

#[derive(Debug, Args)]
pub struct CampaignsArgs {
    /// The api's base URL (plain HTTP) [default: APP_ADMIN__API_URL,
    /// else http://127.0.0.1:8080].
    #[arg(long, global = true, value_name = "URL")]
    api: Option<String>,
    /// text, or json for scripts (the api's campaign objects as it answers
    /// them).
    #[arg(long, global = true, value_enum, default_value_t)]
    output: Output,
    #[command(subcommand)]
    command: CampaignsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CampaignsCommand {
    /// Create a campaign from flags, or from --file (the api's create body).
    #[command(after_help = EXIT_CODES)]
    Create(CreateArgs),
    /// The newest campaigns with their figures.
    #[command(after_help = EXIT_CODES)]
    List {
        /// How many, newest first (1–10,000).
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// One campaign's live figures: stock, taken (the gate's count),
    /// persisted (rows), its waiting room's line, state.
    #[command(after_help = EXIT_CODES)]
    Show { id: CampaignId },
    /// Close a campaign: the gate takes no slot for it any more
    /// (idempotent).
    #[command(after_help = EXIT_CODES)]
    Close { id: CampaignId },
    /// Archive a closed campaign's users and slots from Redis, for good
    /// (a rebuild keeps them archived; idempotent). Run it once reconcile
    /// reports nothing leaked and no letter of it is left (docs/RUNBOOK.md).
    #[command(after_help = EXIT_CODES)]
    Archive { id: CampaignId },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// 1–200 characters.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    name: Option<String>,
    /// 0–1,000,000,000.
    #[arg(
        long,
        required_unless_present = "file",
        conflicts_with = "file",
        allow_negative_numbers = true
    )]
    stock: Option<i64>,
    /// RFC 3339 (2026-12-01T10:00:00Z) [default: now].
    #[arg(long, conflicts_with = "file")]
    starts_at: Option<DateTime<Utc>>,
    /// RFC 3339, after the start [default: no end].
    #[arg(long, conflicts_with = "file")]
    ends_at: Option<DateTime<Utc>>,
    /// A waiting room in front of the sale, admitting this many positions a
    /// second.
    #[arg(long, conflicts_with = "file")]
    admit_per_second: Option<i64>,
    /// Seconds an admitted user has to issue [default: 120].
    #[arg(long, requires = "admit_per_second", conflicts_with = "file")]
    admission_ttl_secs: Option<i64>,
    /// The api's create body as JSON (`{"name", "stock", "starts_at"?,
    /// "ends_at"?, "waiting_room"?}`); `-` reads stdin.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Sent as Idempotency-Key: a retry with the same key and body gets the
    /// first reply, and the same campaign, again.
    #[arg(long)]
    idempotency_key: Option<String>,
}

pub async fn run(settings: &Settings, args: CampaignsArgs) -> Result<i32, AdminError> {
    let api = Api::new(settings, args.api.as_deref())?;
    let output = args.output;
    match args.command {
        CampaignsCommand::Create(create) => {
            let body = create.body()?;
            let mut request = api.http.post(api.url("/api/v1/campaigns")).json(&body);
            if let Some(key) = &create.idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            let view = api.send(request, "creating the campaign").await?;
            show(&view, output)?;
        }
        CampaignsCommand::List { limit } => {
            let request = api
                .http
                .get(api.url("/api/v1/campaigns"))
                .query(&[("limit", limit)]);
            let list = api.send(request, "listing campaigns").await?;
            match output {
                Output::Json => print_json(&list)?,
                Output::Text => {
                    let campaigns: Vec<Campaign> =
                        serde_json::from_value(list["campaigns"].clone())
                            .map_err(|e| unexpected("the campaign list", e))?;
                    print_text(&table(&campaigns));
                }
            }
        }
        CampaignsCommand::Show { id } => {
            let request = api.http.get(api.url(&format!("/api/v1/campaigns/{id}")));
            let view = api.send(request, &format!("campaign {id}")).await?;
            show(&view, output)?;
        }
        CampaignsCommand::Close { id } => {
            let request = api
                .http
                .post(api.url(&format!("/api/v1/campaigns/{id}/close")));
            let view = api.send(request, &format!("closing campaign {id}")).await?;
            show(&view, output)?;
        }
        CampaignsCommand::Archive { id } => {
            let request = api
                .http
                .post(api.url(&format!("/api/v1/campaigns/{id}/archive")));
            let view = api
                .send(request, &format!("archiving campaign {id}"))
                .await?;
            show(&view, output)?;
        }
    }
    Ok(EXIT_OK)
}

impl CreateArgs {
    /// The create body: the file's JSON as it is (the api checks it), or
    /// one made of the flags.
    fn body(&self) -> Result<Value, AdminError> {
        if let Some(path) = &self.file {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(path)
            }
            .map_err(|e| AdminError::Usage(format!("reading {}: {e}", path.display())))?;
            return serde_json::from_str(&text)
                .map_err(|e| AdminError::Usage(format!("{} is not JSON: {e}", path.display())));
        }
        let mut body = json!({ "name": self.name, "stock": self.stock });
        if let Some(at) = self.starts_at {
            body["starts_at"] = json!(at);
        }
        if let Some(at) = self.ends_at {
            body["ends_at"] = json!(at);
        }
        if let Some(rate) = self.admit_per_second {
            body["waiting_room"] = json!({ "admit_per_second": rate });
            if let Some(ttl) = self.admission_ttl_secs {
                body["waiting_room"]["admission_ttl_secs"] = json!(ttl);
            }
        }
        Ok(body)
    }
}

/// The api's admin endpoints.
struct Api {
    http: reqwest::Client,
    base: String,
    token: SecretString,
}

impl Api {
    fn new(settings: &Settings, api: Option<&str>) -> Result<Self, AdminError> {
        let token = settings.auth.admin_token.clone().ok_or_else(|| {
            AdminError::Usage(
                "APP_AUTH__ADMIN_TOKEN is not set: the api's admin endpoints need its admin token"
                    .into(),
            )
        })?;
        let base = api
            .unwrap_or(&settings.admin.api_url)
            .trim_end_matches('/')
            .to_owned();
        if !base.starts_with("http://") {
            return Err(AdminError::Usage(format!(
                "the api URL {base:?} is not http://…: reach an api instance or the balancer over plain HTTP (--api or APP_ADMIN__API_URL)"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(anyhow::Error::from)?;
        Ok(Self { http, base, token })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends an admin request; the reply's JSON, or the error its status
    /// means (the api's `outcome` and `message` in its text).
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Value, AdminError> {
        let reply = request
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| {
                anyhow::Error::new(e)
                    .context(format!("{what}: the api at {} did not answer", self.base))
            })?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let text = format!(
            "{what}: the api answered {} {}: {}",
            status.as_u16(),
            body["outcome"].as_str().unwrap_or("-"),
            body["message"].as_str().unwrap_or("(no message)")
        );
        Err(match status {
            StatusCode::NOT_FOUND => AdminError::NotFound(text),
            StatusCode::BAD_REQUEST
            | StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::CONFLICT
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::UNPROCESSABLE_ENTITY => AdminError::Refused(text),
            _ => AdminError::Failed(anyhow::anyhow!(text)),
        })
    }
}

fn unexpected(what: &str, e: serde_json::Error) -> AdminError {
    AdminError::Failed(anyhow::anyhow!("{what} is not what the api answers: {e}"))
}

/// A campaign as the api's admin reply reads (what the text needs of it).
#[derive(Debug, Deserialize)]
struct Campaign {
    id: String,
    name: String,
    stock: i64,
    taken: Option<i64>,
    persisted: i64,
    state: String,
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    gate: String,
    #[serde(default)]
    archived_at: Option<DateTime<Utc>>,
    waiting_room: Option<Room>,
}

#[derive(Debug, Deserialize)]
struct Room {
    admit_per_second: u64,
    admission_ttl_secs: u64,
    #[serde(default)]
    joined: Option<u64>,
    #[serde(default)]
    admitted: Option<u64>,
    #[serde(default)]
    waiting: Option<u64>,
}

fn show(view: &Value, output: Output) -> Result<(), AdminError> {
    match output {
        Output::Json => print_json(view),
        Output::Text => {
            let campaign: Campaign =
                serde_json::from_value(view.clone()).map_err(|e| unexpected("the campaign", e))?;
            print_text(&card(&campaign));
            Ok(())
        }
    }
}

fn or_dash(n: Option<impl ToString>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// One campaign, a figure a line.
fn card(c: &Campaign) -> String {
    let taken = match c.taken {
        Some(n) => n.to_string(),
        None => format!(
            "- (gate {}: issue requests answer 503 until it is rebuilt)",
            c.gate
        ),
    };
    let waiting = match &c.waiting_room {
        None => "no waiting room".to_owned(),
        Some(r) => format!(
            "{} in line ({} joined, {} admitted; admits {}/s, {} s to issue)",
            or_dash(r.waiting),
            or_dash(r.joined),
            or_dash(r.admitted),
            r.admit_per_second,
            r.admission_ttl_secs
        ),
    };
    let ends = c
        .ends_at
        .map_or_else(|| "no end".to_owned(), |e| e.to_rfc3339());
    let archived = c.archived_at.map_or_else(String::new, |at| {
        format!(
            "\narchived   {} (its users and slots are not kept in Redis)",
            at.to_rfc3339()
        )
    });
    format!(
        "campaign   {}\nname       {}\nstate      {}\nstock      {}\ntaken      {taken}\npersisted  {}\nwaiting    {waiting}\nwindow     {} to {ends}\ncreated    {}{archived}",
        c.id,
        c.name,
        c.state,
        c.stock,
        c.persisted,
        c.starts_at.to_rfc3339(),
        c.created_at.to_rfc3339()
    )
}

/// Campaigns, one a line, under a header.
fn table(campaigns: &[Campaign]) -> String {
    let mut out = format!(
        "{:<36}  {:<9}  {:>10}  {:>10}  {:>10}  {:>8}  NAME",
        "ID", "STATE", "STOCK", "TAKEN", "PERSISTED", "WAITING"
    );
    for c in campaigns {
        let waiting = c.waiting_room.as_ref().and_then(|r| r.waiting);
        out.push_str(&format!(
            "\n{:<36}  {:<9}  {:>10}  {:>10}  {:>10}  {:>8}  {}",
            c.id,
            c.state,
            c.stock,
            or_dash(c.taken),
            c.persisted,
            or_dash(waiting),
            c.name
        ));
    }
    out
}
