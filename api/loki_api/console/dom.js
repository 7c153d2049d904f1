// Building DOM nodes from data without ever parsing data as HTML.
//
// Every value from the API goes in through textContent (or Node.append of a string,
// which makes a Text node). The page's CSP requires Trusted Types for HTML sinks, so
// an `innerHTML = string` anywhere here would throw instead of rendering markup.

/** An element with attributes, properties and children. Strings become text nodes. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'title') node.title = String(value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

/** The element with this id (the page's markup is fixed, so a missing one is a bug). */
export function byId(id) {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`console: no element #${id}`);
  return node;
}

/** Set text only when it changed (cheap re-renders). */
export function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** Calls `fn` at most once per `ms`, trailing call included. */
export function throttle(fn, ms) {
  let timer = null;
  let again = false;
  const run = () => {
    timer = null;
    if (again) {
      again = false;
      fn();
      timer = setTimeout(run, ms);
    }
  };
  return () => {
    if (timer === null) {
      fn();
      timer = setTimeout(run, ms);
    } else {
      again = true;
    }
  };
}
