/* The console page's script (no build step): a VM's serial console in xterm.js and its
   graphical console in noVNC, over the API's console websockets. Same origin, so the
   browser sends the session cookie, which the API checks as it checks a token. */
"use strict";
const hvcConsole = (() => {
  function url(name, kind) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/api/v1/vms/${encodeURIComponent(name)}/console/${kind}`;
  }

  function ended(event) {
    // A refused handshake shows as 1006 without a reason: browsers hide the HTTP answer.
    if (event.code === 1006) return "closed (refused, or the agent cannot be reached)";
    return `closed: ${event.reason || event.code}`;
  }

  /* The serial console: the agent carries it over when the VM moves, so one websocket. */
  function serial(name, element, status) {
    const term = new Terminal({ cursorBlink: true, scrollback: 5000 });
    const fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(element);
    fit.fit();
    window.addEventListener("resize", () => fit.fit());
    const ws = new WebSocket(url(name, "serial"), ["hvc.console"]);
    ws.binaryType = "arraybuffer";
    const encoder = new TextEncoder();
    ws.onopen = () => { status.textContent = "connected"; term.focus(); };
    ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
    ws.onclose = (e) => { status.textContent = ended(e); };
    term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
    window.hvcSerial = { term, ws };  // for the browser tests
    return ws;
  }

  /* The graphical console: an RFB session cannot move with the VM, so the agent closes it
     when the VM runs elsewhere and this reconnects (for a minute at most). */
  function graphical(RFB, name, element, status) {
    let tries = 0;
    function connect() {
      status.textContent = "connecting…";
      const rfb = new RFB(element, url(name, "vnc"), { wsProtocols: ["binary"] });
      rfb.scaleViewport = true;
      rfb.addEventListener("connect", () => { tries = 0; status.textContent = "connected"; });
      rfb.addEventListener("disconnect", () => {
        if (tries++ < 30) {
          status.textContent = "disconnected: reconnecting…";
          setTimeout(connect, 2000);
        } else {
          status.textContent = "disconnected";
        }
      });
      window.hvcScreen = rfb;  // for the browser tests
    }
    connect();
  }

  return { serial, graphical };
})();
