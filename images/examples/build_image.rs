//! Builds the default image into a directory and prints its manifest:
//! `cargo run -p zennet-images --example build_image -- DIR [KERNEL_PACKAGE]`
//! (a kernel package other than the recipe's makes an image `zennet-tiny-custom`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: build_image DIR")?;
    let mut recipe = zennet_images::default_recipe();
    if let Some(kernel) = std::env::args().nth(2) {
        recipe.id = "zennet-tiny-custom".into();
        recipe.kernel_package = kernel;
    }
    let image = zennet_images::build(&recipe, &dir)?;
    println!("{}", serde_json::to_string_pretty(&image.manifest)?);
    println!("kernel:    {}", image.kernel().display());
    println!("initramfs: {}", image.initramfs().display());
    Ok(())
}
