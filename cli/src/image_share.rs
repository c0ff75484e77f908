//! Images over the file network, both ends: `zennet image publish` adds a
//! built image to the node's file network, and [`FsImages`] is the
//! provider's [`ImageSource`]: it fetches a task's image by file id
//! (verified part by part, from every seeder at once), and installs it only
//! if it is the image the announcement names (`zennet_images::install`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use zennet_chain::task::ImageChoice;
use zennet_fs::api::{AddRequest, Added, GetRequest, TransferState};
use zennet_fs::{FileId, Fs};
use zennet_provider::images::{FetchError, ImageSource};

use crate::commands::Output;
use crate::home::Home;

/// Where fetches stage their trees: inside the images directory, so the
/// move into the store is a rename. Dot-named, so listings skip it.
const FETCH_PREFIX: &str = ".fetch-";
/// Where `image publish` lays an image out for the file network.
const PUBLISH_DIR: &str = ".publish";

/// `zennet image publish ID`: adds the image built here (its manifest and
/// the files it names) to the running node's file network, seeded at
/// `price` per MiB (0 by default: a publisher wants providers to run it),
/// and prints the file id a task file names it by (`file` beside `id` and
/// `hash` in `images`).
pub async fn publish(home: &Home, id: &str, price: Option<u128>, out: Output) -> Result<()> {
    home.require_initialized()?;
    let client = home.client()?;
    let image = zennet_images::load(&home.images_dir(), id)?;
    image
        .verify()
        .with_context(|| format!("image `{id}` is damaged; build it again"))?;
    let staging = home.images_dir().join(PUBLISH_DIR);
    let layout = zennet_images::publish_layout(&image, &staging)?;
    let req = AddRequest {
        path: layout.clone(),
        encrypt: false,
        key: None,
        price_per_mib: Some(price.unwrap_or(0)),
    };
    let added: Result<Added> = client.post("/v1/fs/files", &req).await;
    // The node copied the parts into its store; the layout was only links.
    let _ = std::fs::remove_dir_all(&layout);
    let added = added?;
    let view = Published {
        id: image.manifest.id.clone(),
        hash: image.manifest.hash.clone(),
        file: added.id,
        bytes: added.length,
        price_per_mib: added.price_per_mib,
    };
    out.print(&view, || {
        format!(
            "image  {} {}\nfile   {} ({} bytes, {} per MiB)\nin a task file:\n  images = [{{ id = \"{}\", hash = \"0x{}\", file = \"{}\" }}]",
            view.id,
            view.hash,
            view.file,
            view.bytes,
            view.price_per_mib,
            view.id,
            view.hash,
            view.file,
        )
    });
    Ok(())
}

#[derive(serde::Serialize)]
struct Published {
    id: String,
    hash: String,
    file: FileId,
    bytes: u64,
    #[serde(with = "zennet_chain::codec::amount_str")]
    price_per_mib: u128,
}

/// The provider's image source: the node's file network.
pub struct FsImages {
    fs: Arc<Fs>,
    images_dir: PathBuf,
}

impl FsImages {
    /// Removes what fetches cut off by a stop left behind (none runs yet).
    pub fn new(fs: Arc<Fs>, images_dir: PathBuf) -> FsImages {
        if let Ok(entries) = std::fs::read_dir(&images_dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(FETCH_PREFIX) {
                    tracing::warn!(path = %e.path().display(), "removing an interrupted image fetch");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        FsImages { fs, images_dir }
    }
}

impl ImageSource for FsImages {
    fn fetch(
        &self,
        choice: ImageChoice,
        max_bytes: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), FetchError>> + Send>> {
        let fs = self.fs.clone();
        let dir = self.images_dir.clone();
        Box::pin(async move {
            fetch(fs, &dir, &choice, max_bytes)
                .await
                .map_err(|e| format!("{e:#}").into())
        })
    }
}

/// How often a fetch looks at its transfer.
const POLL: Duration = Duration::from_millis(250);

async fn fetch(fs: Arc<Fs>, images_dir: &Path, choice: &ImageChoice, max: u64) -> Result<()> {
    let Some(file) = choice.file else {
        bail!("image `{}` names no file to fetch", choice.id);
    };
    let file = FileId(file.0);
    std::fs::create_dir_all(images_dir)
        .with_context(|| format!("cannot create {}", images_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(FETCH_PREFIX)
        .tempdir_in(images_dir)
        .with_context(|| format!("cannot stage a fetch in {}", images_dir.display()))?;
    let tree = work.path().join(&choice.id);
    let mut req = GetRequest::new(file, tree.clone());
    req.max_length = Some(max);
    fs.get(req)?;
    loop {
        tokio::time::sleep(POLL).await;
        let t = fs.transfer(&file)?;
        match t.state {
            TransferState::Done => break,
            TransferState::Failed => bail!(
                "file {file}: {}",
                t.error.as_deref().unwrap_or("the download failed")
            ),
            TransferState::Finding | TransferState::Downloading => {}
        }
    }
    let (id, hash) = (choice.id.clone(), hex::encode(choice.hash.0));
    let dir = images_dir.to_owned();
    let installed =
        tokio::task::spawn_blocking(move || zennet_images::install(&dir, &tree, &id, &hash))
            .await
            .context("the image check was interrupted")?;
    if installed.is_err() {
        // Not the image it claims to be: neither kept nor seeded on.
        if let Err(e) = fs.remove(&file) {
            tracing::warn!(%file, error = %e, "cannot drop the refused image file");
        }
    }
    installed?;
    drop(work);
    Ok(())
}
