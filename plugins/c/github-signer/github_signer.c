// GitHub-style signer in C: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
// The HMAC is computed by the host with the application's newest secret (the plugin never
// sees it). Checked by plugins/conformance/signer-github.json.
//
// Ownership (wit-bindgen C ABI): arguments belong to this function and are freed here; the
// returned headers or error are malloc'd and freed by the generated post-return function.

#include <stdlib.h>
#include <string.h>

#include "signer_plugin.h"

static const char HEX[] = "0123456789abcdef";
static const char HEADER[] = "X-Hub-Signature-256";
static const char PREFIX[] = "sha256=";

static void set_error(exports_squall_plugin_signer_plugin_error_t *err, const char *what,
                      const signer_plugin_string_t *detail) {
    size_t what_len = strlen(what);
    size_t len = what_len + detail->len;
    uint8_t *msg = malloc(len);
    if (msg == NULL) abort();
    memcpy(msg, what, what_len);
    memcpy(msg + what_len, detail->ptr, detail->len);
    err->message.ptr = msg;
    err->message.len = len;
}

bool exports_squall_plugin_signer_sign(exports_squall_plugin_signer_attempt_context_t *ctx,
                                       exports_squall_plugin_signer_request_t *request,
                                       signer_plugin_string_t *key_name, uint64_t timestamp,
                                       exports_squall_plugin_signer_headers_t *ret,
                                       exports_squall_plugin_signer_plugin_error_t *err) {
    (void)timestamp; // GitHub signs the body only.
    signer_plugin_list_u8_t mac = {0};
    signer_plugin_string_t host_error = {0};
    bool ok = squall_plugin_host_hmac_sha256(key_name, &request->body, &mac, &host_error);

    if (ok) {
        signer_plugin_tuple2_string_string_t *header = malloc(sizeof *header);
        size_t value_len = sizeof PREFIX - 1 + 2 * mac.len;
        uint8_t *value = malloc(value_len);
        if (header == NULL || value == NULL) abort();
        memcpy(value, PREFIX, sizeof PREFIX - 1);
        for (size_t i = 0; i < mac.len; i++) {
            value[sizeof PREFIX - 1 + 2 * i] = (uint8_t)HEX[mac.ptr[i] >> 4];
            value[sizeof PREFIX - 1 + 2 * i + 1] = (uint8_t)HEX[mac.ptr[i] & 15];
        }
        signer_plugin_string_dup(&header->f0, HEADER);
        header->f1.ptr = value;
        header->f1.len = value_len;
        ret->ptr = header;
        ret->len = 1;
        signer_plugin_list_u8_free(&mac);
    } else {
        set_error(err, "github-signer: ", &host_error);
        signer_plugin_string_free(&host_error);
    }

    exports_squall_plugin_signer_attempt_context_free(ctx);
    exports_squall_plugin_signer_request_free(request);
    signer_plugin_string_free(key_name);
    return ok;
}
