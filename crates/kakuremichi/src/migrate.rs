//! `kakuremichi control migrate`: what a new release would change in Control's database, and
//! applying it ahead of starting Control (docs/backups.md).

use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct MigrateArgs {
    /// Control's data directory (where control.db and backups/ are).
    #[arg(long, env = "KAKUREMICHI_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub database: crate::database::DatabaseArg,
    /// Print the schema version and the migrations that would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(a: MigrateArgs) -> anyhow::Result<()> {
    let url = a.database.url()?;
    let url = url.as_deref();
    let Some(plan) = kakuremichi_control::migration_plan(&a.data_dir, url).await? else {
        let db = a.data_dir.join("control.db");
        if a.dry_run {
            println!(
                "no database at {} yet: it would be created at the newest schema",
                db.display()
            );
        } else {
            std::fs::create_dir_all(&a.data_dir)?;
            kakuremichi_control::migrate(&a.data_dir, url).await?;
            println!("created {} at the newest schema", db.display());
        }
        return Ok(());
    };
    match plan.current {
        Some(v) => println!(
            "database schema: version {v}; this release knows version {}",
            plan.known
        ),
        None => println!(
            "database schema: empty; this release knows version {}",
            plan.known
        ),
    }
    if plan.pending.is_empty() {
        println!("up to date: nothing to migrate");
        return Ok(());
    }
    let verb = if a.dry_run { "would apply" } else { "applying" };
    println!("{verb} {} migration(s):", plan.pending.len());
    for (version, description) in &plan.pending {
        println!("  {version:>4}  {description}");
    }
    if a.dry_run {
        if plan.current.is_some() {
            println!(
                "a copy of the database would be made first, in {}",
                a.data_dir.join("backups").display()
            );
        }
        println!("dry run: nothing changed");
        return Ok(());
    }
    kakuremichi_control::migrate(&a.data_dir, url).await?;
    println!("done");
    Ok(())
}

#[derive(Args)]
pub struct MigrateDbArgs {
    /// The database to copy from, e.g. sqlite:///var/lib/kakuremichi/control.db (Control
    /// stopped).
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The empty database to copy into, e.g. postgres://kakuremichi:PASSWORD@db/kakuremichi.
    /// Its schema is created; a database that already holds data is refused.
    #[arg(long, value_name = "URL")]
    pub to: String,
}

/// `kakuremichi control migrate-db`: every row (users, tokens, nodes, tunnels, certificates,
/// the audit log...) from one database into another, counts verified.
pub async fn migrate_db(a: MigrateDbArgs) -> anyhow::Result<()> {
    let copied = kakuremichi_control::migrate_db(&a.from, &a.to).await?;
    let rows: i64 = copied.iter().map(|(_, n)| n).sum();
    for (table, n) in &copied {
        println!("{table:<20} {n:>9} rows");
    }
    println!(
        "copied {rows} rows in {} tables; the counts match on both sides. Point DATABASE_URL at \
         the new database and start Control (keep the data directory: secrets.key decrypts the \
         stored DNS credentials).",
        copied.len()
    );
    Ok(())
}
