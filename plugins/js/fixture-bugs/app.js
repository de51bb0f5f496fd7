// Test fixture (tests/engine/plugins.rs, tests/e2e/plugins.rs): the mistakes a JavaScript author
// makes, one per `mode` (plugin config), to check what the host reports for each.
//   type-error      throws new TypeError, reported as the guide does (`reportBug`): its type,
//                   message and stack reach stderr before the trap
//   type-error-raw  throws new TypeError with no handler: the engine prints message and stack
//   string          throws a string
//   negative        a retry policy returning -5 seconds
//   fail            a deliberate failure (`fail`), reported as plugin-error
//   log             writes to stdout and stderr, then succeeds
import { configGet } from 'squall:plugin/host@0.3.0';

function reportBug(e) {
  console.error(e instanceof Error ? `${e.name}: ${e.message}\n${e.stack}` : `uncaught: ${String(e)}`);
}

function guarded(f) {
  try {
    return f();
  } catch (e) {
    reportBug(e);
    throw e;
  }
}

function misbehave(ok) {
  const mode = configGet('mode') ?? 'ok';
  switch (mode) {
    case 'type-error':
      return guarded(() => {
        throw new TypeError('amount is missing');
      });
    case 'type-error-raw':
      throw new TypeError('amount is missing');
    case 'string':
      throw 'just a string';
    case 'fail':
      return { tag: 'fail', val: 'refused on purpose' };
    case 'log':
      console.log('fixture-bugs: to stdout');
      console.error('fixture-bugs: to stderr');
      return ok();
    default:
      return ok();
  }
}

export const transform = {
  transform(event) {
    return misbehave(() => ({
      tag: 'send',
      val: { method: 'POST', url: event.endpointUrl, headers: [], body: event.body },
    }));
  },
};

export const signer = {
  sign(ctx, keyName, timestamp) {
    return misbehave(() => ({ tag: 'signed', val: [['x-fixture', 'signed']] }));
  },
};

export const retryPolicy = {
  decide(ctx, outcome) {
    if (configGet('mode') === 'negative') return { tag: 'retry-after-seconds', val: -5 };
    return misbehave(() => ({ tag: 'retry-after-seconds', val: 30 }));
  },
};
