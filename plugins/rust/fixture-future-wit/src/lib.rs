//! Test fixture: exports `squall:plugin/signer@9.0.0`, a version the host does not link;
//! loading it must fail at load time naming the item and the supported versions.

wit_bindgen::generate!({ path: "wit", world: "future-signer" });

struct Component;

impl exports::squall::plugin::signer::Guest for Component {
    fn sign(_body: Vec<u8>) -> Vec<String> {
        Vec::new()
    }
}

export!(Component);
