import { io } from "socket.io-client";

const socket = io(`${process.env.ORGCAST_URL}/demo`, { auth: { token: process.env.ORGCAST_TOKEN } });
socket.on("connect_error", (err) => { console.error(err.message, err.data); process.exit(1); });
socket.on("message", (msg) => console.log("message", msg));
const joined = await socket.emitWithAck("join", { room: "lobby" });
const ack = await socket.emitWithAck("message", { room: "lobby", body: { text: "hello" } });
console.log(joined.seq, ack);
socket.disconnect();
