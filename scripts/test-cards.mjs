// test-cards: distinct, Luhn-valid card numbers for tests and load scripts.
//
// The event ledger limits each card (a keyed hash of its number): at most two checkouts in
// progress, each item's purchase limit across the event, and no checkout after three recent
// declines. Many buyers sharing 4242 4242 4242 4242 would be one buyer to it, so every
// simulated buyer who should be approved gets a card of its own. The acquirer simulator
// approves any Luhn-valid number that is not one of Stripe's documented decline cards.
// Every generated number starts with GENERATED_PREFIX, so a leak scan finds any of them
// with GENERATED_PATTERN.

export const GENERATED_PREFIX = '4242';
/** Matches every generated number (and 4242 4242 4242 4242 itself) in clear. */
export const GENERATED_PATTERN = /4242[0-9]{8}4242/;

// A random start per process, then consecutive: distinct within a process, and two
// processes (test files, load scripts) collide only if their starts fall within the
// counts they use of each other.
let counter = Math.floor(Math.random() * 1e7);

/** Whether a number passes the Luhn check. */
export function luhnValid(number) {
  let sum = 0;
  for (let i = 0; i < number.length; i++) {
    let d = number.charCodeAt(number.length - 1 - i) - 48;
    if (i % 2 === 1) { d *= 2; if (d > 9) d -= 9; }
    sum += d;
  }
  return sum % 10 === 0;
}

/** A new approving Visa test number, different from every other this process made. It
 *  ends in 4242 like Stripe's own, so a page shows "VISA •••• 4242" for it. */
export function freshCard() {
  counter = (counter + 1) % 1e7;
  const middle = String(counter).padStart(7, '0');
  for (let d = 0; d < 10; d++) {
    const n = `${GENERATED_PREFIX}${middle}${d}4242`;
    if (luhnValid(n)) return n;
  }
  throw new Error('no Luhn digit found');
}
