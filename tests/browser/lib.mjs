// What the browser scripts share: the server's API with the key, meeting tokens, and the
// checks they print ("ok - ..."; a failed one throws "FAILED: ...").
// Env: BASE (server URL), KEY (API key).
const { BASE, KEY } = process.env;

export const api = async (method, path, body) => {
  const res = await fetch(BASE + path, {
    method,
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  const data = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: ${JSON.stringify(data)}`);
  return data;
};

export const token = async (properties) => (await api("POST", "/v1/meeting-tokens", { properties })).token;

export const check = (cond, what) => {
  if (!cond) throw new Error("FAILED: " + what);
  console.log("ok -", what);
};
