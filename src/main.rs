//! The `tern` binary: parses arguments and starts the broker. It holds no broker logic.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    println!("tern {}", tern::VERSION);
}
