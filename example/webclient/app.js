// The example page's script: it calls the example Login service
// (example.auth.v1.Authorization/Login) through healthgate with grpc-web,
// Google's gRPC-Web client, and shows the answer or the error. The
// messages are encoded by hand (two strings in, a string and a user out)
// so that the page needs no protoc plugin: grpc-web only needs a
// serializer and a deserializer.
//
// Query parameters: gw (the gateway's URL, e.g. http://127.0.0.1:9000),
// email, password, and format: text (application/grpc-web-text, the
// default) or binary (application/grpc-web+proto).
import { GrpcWebClientBase, MethodDescriptor, MethodType } from 'grpc-web';

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function varint(n) {
  const out = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}

// LoginRequest {email = 1; password = 2}
function encodeLoginRequest(req) {
  const out = [];
  [[1, req.email], [2, req.password]].forEach(([field, value]) => {
    const b = utf8.encode(value || '');
    if (b.length === 0) return;
    out.push((field << 3) | 2, ...varint(b.length), ...b);
  });
  return new Uint8Array(out);
}

// Reads the fields of a message: {number: [values]}, each value a number
// (varint) or bytes (length-delimited).
function fields(bytes) {
  const out = {};
  let i = 0;
  const readVarint = () => {
    let n = 0, shift = 0, b;
    do {
      b = bytes[i++];
      n += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80);
    return n;
  };
  while (i < bytes.length) {
    const key = readVarint();
    const field = Math.floor(key / 8), type = key & 7;
    let value;
    if (type === 0) value = readVarint();
    else if (type === 2) { const n = readVarint(); value = bytes.subarray(i, i + n); i += n; }
    else if (type === 1) { i += 8; continue; }
    else if (type === 5) { i += 4; continue; }
    else throw new Error('unsupported wire type ' + type);
    (out[field] = out[field] || []).push(value);
  }
  return out;
}

const str = (f, n) => (f[n] ? fromUtf8.decode(f[n][0]) : '');

// LoginResponse {message = 1; User user = 2}, User {id = 1; email = 2;
// username = 3; avatar = 4}
function decodeLoginResponse(bytes) {
  const f = fields(bytes);
  const resp = { message: str(f, 1), user: null };
  if (f[2]) {
    const u = fields(f[2][0]);
    resp.user = { id: u[1] ? u[1][0] : 0, email: str(u, 2), username: str(u, 3) };
  }
  return resp;
}

class LoginRequest {}
class LoginResponse {}

const login = new MethodDescriptor(
  '/example.auth.v1.Authorization/Login', MethodType.UNARY,
  LoginRequest, LoginResponse, encodeLoginRequest, decodeLoginResponse);

function show(state, code, text, backend) {
  const el = document.getElementById('result');
  el.dataset.state = state;
  el.dataset.code = String(code);
  el.dataset.backend = backend || '';
  el.textContent = text;
  el.className = code === 0 ? 'ok' : 'bad';
}

function main() {
  const q = new URLSearchParams(location.search);
  const gw = q.get('gw') || location.origin;
  const format = q.get('format') === 'binary' ? 'binary' : 'text';
  document.getElementById('call').textContent =
    `Login(${q.get('email') || ''}) via ${gw} as application/grpc-web${format === 'text' ? '-text' : '+proto'}`;
  const client = new GrpcWebClientBase({ format });
  let backend = '';
  const call = client.rpcCall(
    gw + login.getName(),
    { email: q.get('email') || '', password: q.get('password') || '' },
    {}, login,
    (err, resp) => {
      if (err) {
        show('done', err.code, `error ${err.code}: ${err.message}`, backend);
        return;
      }
      const who = resp.user ? ` (user ${resp.user.username}, id ${resp.user.id})` : '';
      show('done', 0, `OK: ${resp.message}${who}`, backend);
    });
  call.on('metadata', (md) => { backend = md['x-backend'] || ''; });
}

main();
