//! The images Zennet knows how to build, by id: `zennet-tiny` (the default,
//! all in RAM; see `recipe.rs`), and two images for distributed jobs that
//! carry a read-only root disk beside the same kernel and initramfs:
//!
//! * `zennet-spark`: Debian's headless OpenJDK 17 and Apache Spark's jars
//!   (from the pinned PyPI `pyspark` source distribution, which ships them),
//!   with `/usr/bin/java` and a `spark-class` launcher.
//! * `zennet-dask`: Debian's Python 3 and `python3-distributed`.

use crate::manifest::DiskRole;
use crate::recipe::{
    DEFAULT_IMAGE_ID, DiskFile, DiskLink, DiskRecipe, Download, Recipe, default_recipe,
};

/// Id of the Spark image.
pub const SPARK_IMAGE_ID: &str = "zennet-spark";

/// Id of the Dask image.
pub const DASK_IMAGE_ID: &str = "zennet-dask";

/// Every image id [`recipe`] knows, the default first.
pub const IMAGE_IDS: [&str; 3] = [DEFAULT_IMAGE_ID, SPARK_IMAGE_ID, DASK_IMAGE_ID];

/// The recipe of image `id`, or `None` for an id this crate cannot build.
pub fn recipe(id: &str) -> Option<Recipe> {
    match id {
        DEFAULT_IMAGE_ID => Some(default_recipe()),
        SPARK_IMAGE_ID => Some(spark_recipe()),
        DASK_IMAGE_ID => Some(dask_recipe()),
        _ => None,
    }
}

/// Spark's release, as PyPI serves it: the `pyspark` sdist carries the
/// jars of the Scala 2.13 build under `deps/jars/`.
const PYSPARK_VERSION: &str = "4.3.0";
const PYSPARK_URL: &str = "https://files.pythonhosted.org/packages/46/b2/\
    4e28aaffe28db4745ac5df3ee9115719c1b5da5cce4106bee99c82d1eb2c/pyspark-4.3.0.tar.gz";
const PYSPARK_SHA256: &str = "e8c517948eff7088a7aa07449aa8eafa4a15a8d50319de2525a6fd26622476c6";
const PYSPARK_SIZE: u64 = 455_910_862;

/// Where the JRE is; `/usr/bin/java` and `JAVA_HOME` point here.
const JAVA_HOME: &str = "/usr/lib/jvm/java-17-openjdk-amd64";

/// `zennet-spark`: what a Spark standalone worker (and its executors, and
/// a master) needs, in about 480 MB. A worker wants 1.5-2 GiB of guest RAM
/// (its own JVM takes about 240 MiB and an executor's heap must be at
/// least 450 MiB), hence `min_memory_mib`.
pub fn spark_recipe() -> Recipe {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    let mut recipe = base_recipe(SPARK_IMAGE_ID);
    recipe.min_memory_mib = 2048;
    recipe.disks.push(DiskRecipe {
        name: "root".into(),
        role: DiskRole::Root,
        packages: strings(&["openjdk-17-jre-headless"]),
        left_out: strings(&[
            // Install-time helpers: alternatives and the Java trust store
            // built by a package script (Java TLS needs it; Spark's own RPC
            // encryption does not).
            "java-common",
            "ca-certificates-java",
            "util-linux",
            // AWT (printing, fonts, images), sound, smart cards and the NSS
            // PKCS#11 provider, none of which Spark loads.
            "libcups2",
            "libfontconfig1",
            "libfreetype6",
            "libharfbuzz0b",
            "libjpeg62-turbo",
            "liblcms2-2",
            "libasound2",
            "libpcsclite1",
            "libnss3",
        ]),
        downloads: vec![Download {
            file: format!("pyspark-{PYSPARK_VERSION}.tar.gz"),
            url: PYSPARK_URL.into(),
            sha256: PYSPARK_SHA256.into(),
            size: PYSPARK_SIZE,
            from: format!("pyspark-{PYSPARK_VERSION}/deps/jars/"),
            to: "/opt/spark/jars".into(),
            exclude: spark_jars_left_out(),
        }],
        links: vec![DiskLink {
            path: "/usr/bin/java".into(),
            target: format!("{JAVA_HOME}/bin/java"),
        }],
        files: vec![
            DiskFile {
                path: "/usr/bin/spark-class".into(),
                mode: 0o755,
                contents: include_str!("../guest/spark/spark-class").into(),
            },
            DiskFile {
                path: "/etc/profile.d/spark.sh".into(),
                mode: 0o644,
                contents: include_str!("../guest/spark/profile.sh").into(),
            },
        ],
        // The JRE libraries of the features whose libraries are left out.
        unchecked: [
            "libfontmanager.so",
            "libj2pcsc.so",
            "libjavajpeg.so",
            "libjsound.so",
            "liblcms.so",
        ]
        .iter()
        .map(|lib| format!("{JAVA_HOME}/lib/{lib}"))
        .collect(),
    });
    recipe
}

/// Of the 279 jars (and 47 of the Spark Connect shell) in the sdist, the
/// ones core, SQL and a standalone worker never load: 175 jars, 293 MB,
/// stay. What goes: Hive and the Thrift server with their metastore stack,
/// Spark Connect, Kubernetes, YARN, MLlib and its linear algebra, GraphX,
/// Streaming, the REPL with the Scala compiler, declarative pipelines, and
/// native libraries for other platforms than linux-x86_64.
fn spark_jars_left_out() -> Vec<String> {
    let modules = [
        "connect",
        "hive",
        "hive-thriftserver",
        "kubernetes",
        "yarn",
        "mllib",
        "mllib-local",
        "graphx",
        "streaming",
        "repl",
        "pipelines",
    ];
    let mut patterns: Vec<String> = modules.iter().map(|m| format!("spark-{m}_*")).collect();
    patterns.extend(
        [
            // The Spark Connect shell's own directory.
            "connect-repl/*",
            // Hive's metastore, SerDes and JDBC stack (Spark SQL keeps ORC,
            // which needs hive-storage-api only).
            "hive-beeline-*",
            "hive-cli-*",
            "hive-common-*",
            "hive-exec-*",
            "hive-jdbc-*",
            "hive-metastore-*",
            "hive-serde-*",
            "hive-service-rpc-*",
            "hive-shims-*",
            "datanucleus-*",
            "derby-*",
            "derbyshared-*",
            "derbytools-*",
            "javax.jdo-*",
            "jdo-api-*",
            "jta-*",
            "transaction-api-*",
            "ST4-*",
            "antlr-runtime-*",
            "libfb303-*",
            "libthrift-*",
            "HikariCP-*",
            "commons-dbcp-*",
            "commons-pool-*",
            "javolution-*",
            "jpam-*",
            "super-csv-*",
            "opencsv-*",
            "stax-api-*",
            "json-1.8.jar",
            "jline-2.*",
            // Kubernetes' client and models.
            "kubernetes-*",
            "volcano-*",
            "vertx-*",
            "zjsonpatch-*",
            // MLlib's linear algebra.
            "breeze*",
            "spire*",
            "algebra_*",
            "cats-kernel_*",
            "arpack*",
            "blas-*",
            "lapack-*",
            "JTransforms-*",
            "JLargeArrays-*",
            // The REPL.
            "scala-compiler-*",
            "jline-3.*",
            // Native code for other platforms.
            "*-osx-*",
            "*-windows-*",
            "*-linux-aarch_64.jar",
            "*-linux-riscv64.jar",
        ]
        .iter()
        .map(|p| (*p).to_owned()),
    );
    patterns
}

/// `zennet-dask`: Python 3 with Dask distributed (scheduler, worker and
/// client) from Debian, about 65 MB.
pub fn dask_recipe() -> Recipe {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    let mut recipe = base_recipe(DASK_IMAGE_ID);
    recipe.min_memory_mib = 1024;
    recipe.disks.push(DiskRecipe {
        name: "root".into(),
        role: DiskRole::Root,
        packages: strings(&["python3", "python3-distributed"]),
        left_out: strings(&[
            // Package management and configuration, used only by package
            // scripts (which byte-compile modules and register them; Python
            // compiles on import instead, into the RAM layer).
            "dpkg",
            "debconf",
            "debconf-2.0",
            // Certificates are assembled by a package script; Dask's TLS,
            // when used, brings its own certificates.
            "ca-certificates",
        ]),
        downloads: Vec::new(),
        links: Vec::new(),
        files: Vec::new(),
        unchecked: Vec::new(),
    });
    recipe
}

/// `zennet-tiny`'s kernel, initramfs files and modules, plus the overlay
/// module the root disk needs, under another id.
fn base_recipe(id: &str) -> Recipe {
    let mut recipe = default_recipe();
    recipe.id = id.to_owned();
    recipe.modules.push("overlay".into());
    recipe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_is_valid_and_found_by_its_id() {
        for id in IMAGE_IDS {
            let recipe = recipe(id).unwrap();
            assert_eq!(recipe.id, id);
            recipe.validate().unwrap();
        }
        assert!(recipe("zennet-../etc").is_none());
    }

    #[test]
    fn disk_images_keep_the_tiny_initramfs() {
        let tiny = default_recipe();
        for recipe in [spark_recipe(), dask_recipe()] {
            assert_eq!(recipe.packages, tiny.packages);
            assert_eq!(recipe.files, tiny.files);
            assert_eq!(recipe.kernel_package, tiny.kernel_package);
            assert!(recipe.modules.contains(&"overlay".to_owned()));
            assert_eq!(recipe.disks.len(), 1);
            assert!(recipe.min_memory_mib >= 1024);
        }
    }

    #[test]
    fn the_pyspark_pin_is_well_formed() {
        let recipe = spark_recipe();
        let download = &recipe.disks[0].downloads[0];
        assert!(download.url.ends_with(&download.file), "{}", download.url);
        assert!(!download.url.contains(char::is_whitespace));
    }
}
