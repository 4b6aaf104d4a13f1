/*
 * lungwatch_seal.c - protocol v2: a v1 frame sealed with ChaCha20-Poly1305 (see
 * lungwatch_frame.h, docs/firmware-protocol.md). Needs libsodium (crypto_aead_chacha20poly1305
 * _ietf, RFC 8439): cc ... lungwatch_frame.c lungwatch_seal.c -lsodium. Any RFC 8439
 * implementation (a hardware engine) can stand in for it.
 */
#include <sodium.h>
#include <string.h>

#include "lungwatch_frame.h"

static uint64_t get_le(const uint8_t *in, unsigned bytes) {
    uint64_t value = 0;
    unsigned i;
    for (i = 0; i < bytes; i++) value |= (uint64_t)in[i] << (8 * i);
    return value;
}

static void put_le(uint8_t *out, uint64_t value, unsigned bytes) {
    unsigned i;
    for (i = 0; i < bytes; i++) out[i] = (uint8_t)(value >> (8 * i));
}

int lwf_session_init(lwf_session *s, const uint8_t *device_key, size_t key_len,
                     uint32_t device_id, uint16_t stream_id, uint32_t session) {
    if (device_key == NULL || key_len < LWF_MIN_DEVICE_KEY_BYTES) return -1;
    if (sodium_init() < 0) return -1;
    lwf_session_key(device_key, key_len, device_id, stream_id, session, s->key);
    s->device_id = device_id;
    s->stream_id = stream_id;
    s->session = session;
    return 0;
}

size_t lwf_seal(const lwf_session *s, uint64_t counter, uint8_t *frame, size_t len, size_t cap) {
    size_t payload_len, total;
    uint8_t nonce[crypto_aead_chacha20poly1305_IETF_NPUBBYTES];
    unsigned long long tag_len = 0;
    if (len < LWF_HEADER_BYTES + LWF_CRC_BYTES || frame[0] != LWF_MAGIC0 ||
        frame[1] != LWF_MAGIC1 || frame[2] != LWF_VERSION || (frame[4] & LWF_FLAG_AUTH))
        return 0;
    payload_len = (size_t)get_le(frame + 6, 2);
    if (len != LWF_HEADER_BYTES + payload_len + LWF_CRC_BYTES) return 0;
    if (get_le(frame + 8, 4) != s->device_id || get_le(frame + 12, 2) != s->stream_id) return 0;
    total = LWF_V2_HEADER_BYTES + payload_len + LWF_TAG_BYTES + LWF_CRC_BYTES;
    if (payload_len > LWF_V2_MAX_PAYLOAD_BYTES || total > cap) return 0;
    memmove(frame + LWF_V2_HEADER_BYTES, frame + LWF_HEADER_BYTES, payload_len);
    frame[2] = LWF_VERSION_2;
    frame[4] = (uint8_t)(frame[4] | LWF_FLAG_AUTH);
    put_le(frame + 16, s->session, 4);
    put_le(frame + LWF_HEADER_BYTES, counter, 8);
    put_le(nonce, s->session, 4);
    put_le(nonce + 4, counter, 8);
    if (crypto_aead_chacha20poly1305_ietf_encrypt_detached(
            frame + LWF_V2_HEADER_BYTES, frame + LWF_V2_HEADER_BYTES + payload_len, &tag_len,
            frame + LWF_V2_HEADER_BYTES, payload_len, frame, LWF_V2_HEADER_BYTES, NULL, nonce,
            s->key) != 0 ||
        tag_len != LWF_TAG_BYTES)
        return 0;
    put_le(frame + total - LWF_CRC_BYTES,
           lwf_crc32c(0, frame, total - LWF_CRC_BYTES), LWF_CRC_BYTES);
    return total;
}
