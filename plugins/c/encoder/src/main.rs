//! `squall-c-encoder IN.wasm OUT.wasm`: encode a core module (with the component-type custom
//! section wit-bindgen's C generator emits) as a component, adapting WASI preview1 imports.

use std::process::ExitCode;

fn run(input: &str, output: &str) -> Result<(), String> {
    let module = std::fs::read(input).map_err(|e| format!("cannot read {input}: {e}"))?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|e| {
            e.adapter(
                "wasi_snapshot_preview1",
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|mut e| e.encode())
        .map_err(|e| format!("cannot encode {input} as a component: {e:#}"))?;
    std::fs::write(output, component).map_err(|e| format!("cannot write {output}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: squall-c-encoder IN.wasm OUT.wasm");
        return ExitCode::from(2);
    }
    match run(&args[1], &args[2]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("squall-c-encoder: {message}");
            ExitCode::FAILURE
        }
    }
}
