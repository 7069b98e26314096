//! Device selection from the `--device` flag.

use anyhow::bail;
use tch::Device;

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`. `auto` picks the first GPU when
/// libtorch finds one (build with `--features cuda`) and the CPU otherwise.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => parse_device("cuda:0"),
        _ => {
            let Some(index) = spec.strip_prefix("cuda:") else {
                bail!("invalid device '{spec}': expected auto, cpu, cuda or cuda:N");
            };
            let Ok(index) = index.parse::<usize>() else {
                bail!("invalid device '{spec}': N in cuda:N must be a GPU number such as 0");
            };
            let count = tch::Cuda::device_count() as usize;
            if index >= count {
                bail!(
                    "device '{spec}' is not available: libtorch sees {count} GPU(s); \
                     use --device cpu, or on a GPU machine run scripts/setup --cuda and \
                     build with --features cuda"
                );
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// Returns the device as the CLI spells it, e.g. `cpu` or `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Returns the thread count used when the user gives none: the number of
/// cores. Runs repeat bit for bit only at the same thread count.
pub fn default_threads() -> i64 {
    std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_junk() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        let err = parse_device("gpu").unwrap_err().to_string();
        assert!(err.contains("'gpu'"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:N"), "{err}");
    }

    #[test]
    fn missing_gpu_names_the_fix() {
        if tch::Cuda::device_count() > 0 {
            return;
        }
        let err = parse_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("--device cpu"), "{err}");
    }
}
