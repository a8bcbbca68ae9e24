// Every code the server may answer with, in words. Shared by the console and the chat.
// Connection refusals (connect_error), event error acks, closing notices and HTTP errors use one
// vocabulary, so one table serves them all; an unknown code is shown as is, never hidden.

const WORDS = {
  // Connection refusals
  namespace_required: "The client connected without naming an organization.",
  tenant_not_found: "This organization does not exist (or was deleted).",
  tenant_suspended: "This organization is suspended.",
  tenant_deleted: "This organization was deleted.",
  auth_required: "No token was given: a token is required.",
  auth_invalid: "The token was refused: it is not valid for this organization.",
  auth_expired: "The token has expired: get a new one.",
  origin_forbidden: "This page's origin is not allowed to connect to this organization.",
  connection_limit: "The organization has reached its connection limit.",
  unavailable: "The server is temporarily unavailable.",
  // Event errors
  bad_request: "The server could not accept that request.",
  not_joined: "You are not in this room (yet).",
  room_forbidden: "Your token does not allow this room.",
  too_large: "That is too large for this organization's limits.",
  rate_limited: "Too many requests: slow down.",
  room_limit: "You are in too many rooms at once.",
  unknown_event: "The server does not know that event.",
  internal: "The server failed unexpectedly.",
  // Server-initiated closes
  key_revoked: "The key that signed your token was revoked.",
  kicked: "You were disconnected by an administrator.",
  shutdown: "The server is restarting.",
  // HTTP API
  forbidden: "This token may not do that.",
  not_found: "Not found.",
  conflict: "That conflicts with what exists.",
  tenant_exists: "An organization with that slug already exists.",
  key_not_found: "No such active key.",
  validation_failed: "Some fields are not valid.",
  invalid_json: "The request body was not valid JSON.",
  method_not_allowed: "That operation is not allowed here.",
  // Webhooks
  webhook_not_found: "No such webhook endpoint.",
  webhook_limit: "This organization has as many webhook endpoints as it may.",
  target_forbidden: "That URL points to a private or local address, which webhooks may not call.",
  delivery_not_found: "No such delivery.",
};

/** A sentence for `code`, followed by the server's own message when it adds something. */
export function describe(code, message) {
  const words = WORDS[code] ?? `Error: ${code}.`;
  if (message && message !== code && message !== words) {
    return `${words} (${code}: ${message})`;
  }
  return `${words} (${code})`;
}

/** Codes after which retrying the same connection later may succeed. */
export const RETRYABLE = new Set(["tenant_suspended", "unavailable", "connection_limit", "shutdown"]);
