// Small DOM helpers. The UI builds every node with these and sets text with `textContent`,
// never through an HTML-parsing property: model output and user input are untrusted and must stay text.

/** `h('div', {class: 'x', onclick: fn}, child, 'text', …)` → an element. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      node.className = value;
    } else if (key === 'dataset') {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(node, children);
  return node;
}

/** The same for SVG elements (the spend chart). */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Removes every child and appends `children`. */
export function replaceChildren(node, ...children) {
  node.replaceChildren();
  append(node, children);
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Speaks `text` to screen readers through the page's polite live region. */
export function announce(text) {
  const region = document.getElementById('announcer');
  if (!region) return;
  region.textContent = '';
  // A fresh text node after a tick, so the same sentence twice is announced twice.
  setTimeout(() => { region.textContent = text; }, 50);
}

/** Micro-dollars → "$0.000123" (money is integer micro-dollars on the wire). */
export function formatMicros(micros) {
  if (micros === null || micros === undefined) return null;
  const dollars = Math.trunc(micros / 1_000_000);
  const rest = String(Math.abs(micros % 1_000_000)).padStart(6, '0');
  return `$${dollars}.${rest}`;
}

export function formatTime(ms) {
  if (!ms) return '';
  return new Date(ms).toLocaleString();
}
