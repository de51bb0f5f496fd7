//! Test fixture: imports `acme:net/socket@1.0.0`, which the host does not provide;
//! loading it must fail at load time naming that import.

wit_bindgen::generate!({ path: "wit", world: "wants-network" });

struct Component;

impl Guest for Component {
    fn run() -> u32 {
        acme::net::socket::connect("example.com")
    }
}

export!(Component);
