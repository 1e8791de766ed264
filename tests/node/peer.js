// An independent OCPP peer for the test suite (tests/test_node_peer.py), built on the npm
// package ocpp-rpc, which shares no code with ocpp-replay or the Python `ocpp` package.
//
//   node peer.js csms VERSION [changed]    a CSMS on 127.0.0.1, an ephemeral port
//   node peer.js cp VERSION URL IDENTITY   a charge point that plays one session and closes
//
// VERSION is 1.6 or 2.0.1. Both validate every message against the OCPP schemas (strictMode).
// Every websocket message each side sends or receives is printed as a JSON line
// {"peer": "csms"|"cp", "id": IDENTITY, "out": true|false, "text": "..."}; the CSMS first
// prints {"port": N}. "changed" makes the CSMS a new release: Authorize answers Blocked.
'use strict';

const { RPCServer, RPCClient } = require('ocpp-rpc');

const [mode, version, ...rest] = process.argv.slice(2);
const protocol = version === '1.6' ? 'ocpp1.6' : 'ocpp2.0.1';
const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const now = () => new Date().toISOString();

function logMessages(peer, id, rpc) {
    rpc.on('message', ({ message, outbound }) => {
        print({ peer, id, out: outbound, text: message.toString() });
    });
}

async function csms(changed) {
    const server = new RPCServer({ protocols: [protocol], strictMode: true });
    let nextTx = 100;
    server.on('client', (client) => {
        logMessages('csms', client.identity, client);
        const accepted = changed ? 'Blocked' : 'Accepted';
        client.handle('BootNotification', () => (
            version === '1.6'
                ? { status: 'Accepted', currentTime: now(), interval: 300 }
                : { status: 'Accepted', currentTime: now(), interval: 300 }
        ));
        client.handle('Heartbeat', () => ({ currentTime: now() }));
        client.handle('StatusNotification', () => ({}));
        client.handle('MeterValues', () => ({}));
        if (version === '1.6') {
            client.handle('Authorize', () => ({ idTagInfo: { status: accepted } }));
            client.handle('StartTransaction', () => {
                const transactionId = nextTx++;
                // the operator stops it remotely a little later: a call of the CSMS's own
                setTimeout(() => client.call('RemoteStopTransaction', { transactionId }).catch(() => {}), 300);
                return { transactionId, idTagInfo: { status: 'Accepted' } };
            });
            client.handle('StopTransaction', () => ({ idTagInfo: { status: 'Accepted' } }));
        } else {
            client.handle('Authorize', () => ({ idTokenInfo: { status: accepted } }));
            client.handle('TransactionEvent', ({ params }) => {
                if (params.eventType === 'Started') {
                    const transactionId = params.transactionInfo.transactionId;
                    setTimeout(() => client.call('RequestStopTransaction', { transactionId }).catch(() => {}), 300);
                }
                return {};
            });
        }
    });
    const http = await server.listen(0, '127.0.0.1');
    print({ port: http.address().port });
    process.on('SIGTERM', async () => {
        await server.close({ force: true });
        process.exit(0);
    });
}

async function chargePoint(url, identity) {
    const cli = new RPCClient({
        endpoint: url, identity, protocols: [protocol], strictMode: true, reconnect: false,
    });
    logMessages('cp', identity, cli);
    let stopped;
    const stop = new Promise((resolve) => { stopped = resolve; });
    if (version === '1.6') {
        cli.handle('RemoteStopTransaction', ({ params }) => { stopped(params.transactionId); return { status: 'Accepted' }; });
    } else {
        cli.handle('RequestStopTransaction', ({ params }) => { stopped(params.transactionId); return { status: 'Accepted' }; });
    }
    await cli.connect();
    if (version === '1.6') {
        await cli.call('BootNotification', { chargePointVendor: 'Alfen BV', chargePointModel: 'NG920-61001' });
        await cli.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available' });
        await cli.call('Authorize', { idTag: 'NODE-TAG' });
        const start = await cli.call('StartTransaction', { connectorId: 1, idTag: 'NODE-TAG', meterStart: 1000, timestamp: now() });
        await cli.call('MeterValues', {
            connectorId: 1, transactionId: start.transactionId,
            meterValue: [{ timestamp: now(), sampledValue: [{ value: '1500', unit: 'Wh' }] }],
        });
        const txId = await stop;
        await cli.call('StopTransaction', { transactionId: txId, meterStop: 2000, timestamp: now(), reason: 'Remote' });
        await cli.call('Heartbeat', {});
    } else {
        await cli.call('BootNotification', { reason: 'PowerUp', chargingStation: { vendorName: 'Alfen BV', model: 'Eve Single Pro-line' } });
        await cli.call('StatusNotification', { timestamp: now(), connectorStatus: 'Available', evseId: 1, connectorId: 1 });
        await cli.call('Authorize', { idToken: { idToken: 'NODE-TAG', type: 'ISO14443' } });
        const tx = { transactionId: 'node-tx-1' };
        await cli.call('TransactionEvent', {
            eventType: 'Started', timestamp: now(), triggerReason: 'Authorized', seqNo: 0,
            transactionInfo: tx, evse: { id: 1, connectorId: 1 }, idToken: { idToken: 'NODE-TAG', type: 'ISO14443' },
        });
        await stop;
        await cli.call('TransactionEvent', {
            eventType: 'Ended', timestamp: now(), triggerReason: 'RemoteStop', seqNo: 1,
            transactionInfo: { ...tx, stoppedReason: 'Remote' },
        });
        await cli.call('Heartbeat', {});
    }
    await cli.close({ code: 1000, reason: 'done' });
}

(async () => {
    if (mode === 'csms') {
        await csms(rest[0] === 'changed');
    } else if (mode === 'cp') {
        await chargePoint(rest[0], rest[1]);
    } else {
        throw new Error(`unknown mode ${mode}`);
    }
})().catch((err) => {
    process.stderr.write(`peer.js: ${err.stack || err}\n`);
    process.exit(1);
});
