//! Generates the parser from grammar/skp.lalrpop into OUT_DIR.
fn main() {
    println!("cargo:rerun-if-changed=grammar/skp.lalrpop");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    lalrpop::Configuration::new()
        .set_in_dir("grammar")
        .set_out_dir(out)
        .process()
        .expect("grammar/skp.lalrpop must generate a parser");
}
