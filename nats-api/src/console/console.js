// The console's live panel: polls /console/live every 2 s and turns two readings into
// rates (messages accepted and acknowledged per second). No framework, no build.
"use strict";
(function () {
  if (!document.getElementById("live")) {
    return;
  }
  const POLL_MS = 2000;
  let previous = null;

  function show(id, text) {
    const element = document.getElementById(id);
    if (element) {
      element.textContent = text;
    }
  }

  function perSecond(now, before, pick) {
    const seconds = (now.at_ms - before.at_ms) / 1000;
    const a = pick(now);
    const b = pick(before);
    if (seconds <= 0 || a === undefined || b === undefined) {
      return "–";
    }
    return Math.max(0, (a - b) / seconds).toFixed(1);
  }

  function render(now) {
    if (now.stream) {
      show("stream-messages", String(now.stream.messages));
    }
    if (now.consumer) {
      show("consumer-pending", String(now.consumer.pending));
      show("consumer-ack-pending", String(now.consumer.ack_pending));
      show("consumer-redelivered", String(now.consumer.redelivered));
    }
    if (now.dead_letters !== null && now.dead_letters !== undefined) {
      show("dead-letters-count", String(now.dead_letters));
    }
    if (previous) {
      show("ingest-rate", perSecond(now, previous, (f) => f.stream && f.stream.last_sequence));
      show("processed-rate", perSecond(now, previous, (f) => f.consumer && f.consumer.ack_floor));
    }
    show("live-problems", now.problems.join("; "));
    previous = now;
  }

  async function poll() {
    try {
      const reply = await fetch("/console/live", {
        headers: { accept: "application/json" },
        cache: "no-store",
      });
      if (!reply.ok) {
        throw new Error("HTTP " + reply.status);
      }
      render(await reply.json());
    } catch (error) {
      show("live-problems", "live figures unavailable: " + error.message);
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
