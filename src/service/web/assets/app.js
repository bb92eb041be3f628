// modelmirror web catalog: small enhancements only. Every page works without this script.
"use strict";

// Diagrams: without this script a diagram is drawn at its natural size in a frame that scrolls (on a phone
// too, where the browser's own pinch zoom works). This adds zoom buttons, Ctrl+wheel zoom, and dragging
// with the mouse to move around.
function zoomable(frame) {
  const svg = frame.querySelector("svg.diagram");
  if (!svg) return;
  const natural = svg.viewBox.baseVal.width || svg.getBoundingClientRect().width;
  let scale = 1;
  const apply = (next, fx, fy) => {
    const before = { w: frame.scrollWidth, h: frame.scrollHeight };
    const ax = frame.scrollLeft + frame.clientWidth * fx;
    const ay = frame.scrollTop + frame.clientHeight * fy;
    scale = Math.min(Math.max(next, 0.1), 3);
    svg.style.width = `${natural * scale}px`;
    svg.style.height = "auto";
    frame.scrollLeft = ax * (frame.scrollWidth / before.w) - frame.clientWidth * fx;
    frame.scrollTop = ay * (frame.scrollHeight / before.h) - frame.clientHeight * fy;
  };
  const fit = () => apply(Math.min(1, frame.clientWidth / natural), 0, 0);
  const tools = document.createElement("p");
  tools.className = "zoom-tools";
  for (const [label, title, act] of [
    ["−", "Zoom out", () => apply(scale / 1.25, 0.5, 0.5)],
    ["+", "Zoom in", () => apply(scale * 1.25, 0.5, 0.5)],
    ["Fit", "Fit the width", fit],
    ["100%", "Natural size", () => apply(1, 0, 0)],
  ]) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.title = title;
    b.addEventListener("click", act);
    tools.appendChild(b);
  }
  frame.before(tools);
  frame.addEventListener("wheel", (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault();
    const rect = frame.getBoundingClientRect();
    apply(scale * (e.deltaY < 0 ? 1.15 : 1 / 1.15), (e.clientX - rect.left) / rect.width, (e.clientY - rect.top) / rect.height);
  }, { passive: false });
  let drag = null;
  frame.addEventListener("pointerdown", (e) => {
    if (e.pointerType !== "mouse" || e.button !== 0 || e.target.closest("a")) return;
    drag = { x: e.clientX, y: e.clientY, left: frame.scrollLeft, top: frame.scrollTop };
    frame.classList.add("dragging");
  });
  window.addEventListener("pointermove", (e) => {
    if (!drag) return;
    frame.scrollLeft = drag.left - (e.clientX - drag.x);
    frame.scrollTop = drag.top - (e.clientY - drag.y);
  });
  window.addEventListener("pointerup", () => {
    drag = null;
    frame.classList.remove("dragging");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-zoom]").forEach(zoomable);
  // Expand or collapse every attribute tree.
  document.querySelectorAll("p.tree-tools").forEach((p) => { p.hidden = false; });
  document.querySelectorAll("button[data-tree]").forEach((button) => {
    button.addEventListener("click", () => {
      const open = button.dataset.tree === "open";
      document.querySelectorAll("ul.tree details").forEach((d) => { d.open = open; });
    });
  });
  // A link to an attribute inside a closed subtree opens the subtree.
  let id = "";
  try {
    id = decodeURIComponent(location.hash.slice(1));
  } catch (_) {
    id = location.hash.slice(1);
  }
  const target = id && document.getElementById(id);
  if (target) {
    for (let d = target.closest("details"); d; d = d.parentElement.closest("details")) d.open = true;
    target.scrollIntoView();
  }
});
