//! Builds an image into a directory and prints its manifest:
//! `cargo run -p zennet-images --example build_image -- DIR [ID [KERNEL_PACKAGE]]`
//! (ID defaults to zennet-tiny; a kernel package other than the recipe's
//! makes an image `<ID>-custom`). Steps are logged as they start.

use std::path::PathBuf;

use zennet_images::Progress;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .ok_or("usage: build_image DIR [ID [KERNEL_PACKAGE]]")?;
    let id = args
        .next()
        .unwrap_or_else(|| zennet_images::DEFAULT_IMAGE_ID.into());
    let mut recipe = zennet_images::recipe(&id).ok_or_else(|| {
        format!(
            "no image `{id}`; known: {}",
            zennet_images::IMAGE_IDS.join(", ")
        )
    })?;
    if let Some(kernel) = args.next() {
        recipe.id = format!("{id}-custom");
        recipe.kernel_package = kernel;
    }
    let mut last_percent = None;
    let image =
        zennet_images::build_with_progress(&recipe, &dir, &mut |progress| match progress {
            Progress::Step(step) => eprintln!("== {step}"),
            Progress::Download { name, done, total } => {
                let percent = done * 100 / total.max(1);
                if last_percent != Some(percent) && percent % 10 == 0 {
                    last_percent = Some(percent);
                    eprintln!("   {name}: {percent}% of {} MB", total / 1_000_000);
                }
            }
        })?;
    println!("{}", serde_json::to_string_pretty(&image.manifest)?);
    println!("kernel:    {}", image.kernel().display());
    println!("initramfs: {}", image.initramfs().display());
    for disk in &image.manifest.disks {
        println!(
            "disk:      {} ({})",
            image.disk_path(disk).display(),
            disk.serial()
        );
    }
    Ok(())
}
