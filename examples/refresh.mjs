import { io } from "socket.io-client";

// Tokens come from your backend; here orgcast's mint route with the tenant's API key stands in.
async function newToken() {
  const response = await fetch(`${process.env.ORGCAST_URL}/api/v1/tenants/demo/tokens`, {
    method: "POST",
    headers: { Authorization: `Bearer ${process.env.ORGCAST_API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ sub: "tour-user", ttl_seconds: 3600 }),
  });
  return (await response.json()).token;
}

// A function as auth: every reconnect fetches a fresh token too.
const socket = io(`${process.env.ORGCAST_URL}/demo`, { auth: async (cb) => cb({ token: await newToken() }) });
socket.on("closing", ({ code, message }) => console.log("closing", code, message));
socket.on("token_expiring", async ({ exp }) => {
  const ack = await socket.emitWithAck("refresh", { token: await newToken() });
  console.log("refreshed", exp, ack);
  socket.disconnect(); // the tour ends here; a real client stays connected
});
