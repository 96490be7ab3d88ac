//! Set-up shared by the benchmarks: a runtime with one worker and a platform
//! on a temporary data directory with a small instance pool.

use glia_host::Platform;
use glia_host::config::Config;

/// The benchmarks' admin key (the data plane is measured with a key
/// checked on every call, as in production).
const ADMIN_KEY: &str = "glia_benchmark_admin_key_0123456789abcdef";

/// The `authorization` header carrying it.
#[allow(dead_code, reason = "not every benchmark sends requests")]
pub const AUTHORIZATION: &str = "Bearer glia_benchmark_admin_key_0123456789abcdef";

/// A platform opened for a benchmark; the data directory lives as long as it.
pub struct Bench {
    pub rt: tokio::runtime::Runtime,
    pub platform: Platform,
    _dir: tempfile::TempDir,
}

/// Opens a platform; `install_builtins` deploys the built-in functions and
/// models.
#[allow(dead_code, reason = "not every benchmark tweaks the configuration")]
pub fn platform(install_builtins: bool) -> Bench {
    platform_with(install_builtins, |_| {})
}

/// Opens a platform with a `tweak`ed configuration.
pub fn platform_with(install_builtins: bool, tweak: impl FnOnce(&mut Config)) -> Bench {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.server.install_builtins = install_builtins;
    config.runtime.max_instances = 64;
    config.scheduler.max_in_flight = 64;
    // The call path is measured without metering; `benches/billing.rs`
    // measures what metering adds.
    config.billing.enabled = false;
    config.auth.admin_key = Some(ADMIN_KEY.to_string());
    tweak(&mut config);
    let platform = rt.block_on(Platform::open(config)).expect("platform opens");
    Bench {
        rt,
        platform,
        _dir: dir,
    }
}
