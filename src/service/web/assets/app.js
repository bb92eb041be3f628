// modelmirror web catalog: small enhancements only. Every page works without this script.
"use strict";

// Diagrams: scroll to zoom, drag to move (the SVG's viewBox changes; the page does not reload).
function zoomable(frame) {
  const svg = frame.querySelector("svg.diagram");
  if (!svg) return;
  const base = svg.viewBox.baseVal;
  const full = { x: base.x, y: base.y, w: base.width, h: base.height };
  let view = { ...full };
  const apply = () => svg.setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.h}`);
  frame.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = svg.getBoundingClientRect();
    const fx = (e.clientX - rect.left) / rect.width;
    const fy = (e.clientY - rect.top) / rect.height;
    const k = e.deltaY < 0 ? 0.85 : 1 / 0.85;
    const w = Math.min(Math.max(view.w * k, full.w / 20), full.w * 2);
    const h = w * (full.h / full.w);
    view = { x: view.x + (view.w - w) * fx, y: view.y + (view.h - h) * fy, w, h };
    apply();
  }, { passive: false });
  let drag = null;
  frame.addEventListener("pointerdown", (e) => {
    if (e.target.closest("a")) return;
    drag = { x: e.clientX, y: e.clientY, view: { ...view } };
    frame.setPointerCapture(e.pointerId);
  });
  frame.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const rect = svg.getBoundingClientRect();
    view.x = drag.view.x - (e.clientX - drag.x) * (view.w / rect.width);
    view.y = drag.view.y - (e.clientY - drag.y) * (view.h / rect.height);
    apply();
  });
  frame.addEventListener("pointerup", () => { drag = null; });
  frame.addEventListener("dblclick", () => { view = { ...full }; apply(); });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-zoom]").forEach(zoomable);
  // Expand or collapse every attribute tree.
  document.querySelectorAll("button[data-tree]").forEach((button) => {
    button.addEventListener("click", () => {
      const open = button.dataset.tree === "open";
      document.querySelectorAll("ul.tree details").forEach((d) => { d.open = open; });
    });
  });
  // A link to an attribute inside a closed subtree opens the subtree.
  const target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (target) {
    for (let d = target.closest("details"); d; d = d.parentElement.closest("details")) d.open = true;
    target.scrollIntoView();
  }
});
