using Microsoft.ML.Lora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The process-wide cache of loaded bases: each base is held once per (weights SHA-256, device, dtype), reference
/// counted, and freed when the last lease is disposed. Models built on a lease alias its tensors
/// (<see cref="BertModel.ShareWeights"/>) and never change them.
/// </summary>
internal static class BaseModelCache
{
    private static readonly Lock Gate = new();
    private static readonly Dictionary<Key, Entry> Entries = [];

    private static long leasesTaken;
    private static long loads;

    /// <summary>Leases handed out since the process started (tests: how often a model was built on a base).</summary>
    public static long LeasesTaken => Interlocked.Read(ref leasesTaken);

    /// <summary>Bases read from their source since the process started (tests: a base already held is not read again).</summary>
    public static long Loads => Interlocked.Read(ref loads);

    /// <summary>Number of bases held now.</summary>
    public static int Count
    {
        get
        {
            lock (Gate)
            {
                return Entries.Count;
            }
        }
    }

    /// <summary>The SHA-256 of every base held now (for error messages).</summary>
    public static IReadOnlyList<string> HeldFingerprints()
    {
        lock (Gate)
        {
            return Entries.Keys.Select(k => k.Sha256).Distinct(StringComparer.Ordinal).ToList();
        }
    }

    /// <summary>A lease on the base with these weights on this device and dtype, if one is held; null otherwise.</summary>
    public static Lease? TryAcquire(string sha256, Device device, ScalarType dtype)
    {
        lock (Gate)
        {
            if (Entries.TryGetValue(new Key(sha256, DeviceName(device), dtype), out var entry))
            {
                entry.References++;
                return new Lease(entry);
            }

            return null;
        }
    }

    /// <summary>
    /// A lease on <paramref name="source"/>'s base: from the cache when its fingerprint is known (no read, no hash), else
    /// loaded (read and hashed once) and added.
    /// </summary>
    public static Lease AcquireOrLoad(PretrainedModel source, Device device, ScalarType dtype)
    {
        if (FingerprintCache.TryGet(source, out string sha) && TryAcquire(sha, device, dtype) is { } lease)
        {
            return lease;
        }

        Interlocked.Increment(ref loads);
        return Add(source.Load(device), device, dtype);
    }

    /// <summary>
    /// Adds a base just loaded on <paramref name="device"/> (converted to <paramref name="dtype"/> here) and leases it; if
    /// another thread added the same weights meanwhile, <paramref name="loaded"/> is disposed and that one is leased.
    /// </summary>
    public static Lease Add(LoadedPretrainedModel loaded, Device device, ScalarType dtype)
    {
        var key = new Key(loaded.WeightsSha256, DeviceName(device), dtype);
        lock (Gate)
        {
            if (Entries.TryGetValue(key, out var existing))
            {
                existing.References++;
                loaded.Dispose();
                return new Lease(existing);
            }
        }

        try
        {
            if (dtype != ScalarType.Float32)
            {
                // Autocast's policy: matmuls in the low precision, LayerNorm and the residual stream float32.
                loaded.Model.ToMixedPrecision(dtype);
            }

            foreach (var parameter in loaded.Model.parameters())
            {
                parameter.requires_grad = false;
            }
        }
        catch
        {
            loaded.Dispose();
            throw;
        }

        lock (Gate)
        {
            if (Entries.TryGetValue(key, out var existing))
            {
                existing.References++;
                loaded.Dispose();
                return new Lease(existing);
            }

            var entry = new Entry(key, loaded) { References = 1 };
            Entries.Add(key, entry);
            return new Lease(entry);
        }
    }

    private static string DeviceName(Device device) => $"{device.type}:{Math.Max(device.index, 0)}";

    private static void Release(Entry entry)
    {
        lock (Gate)
        {
            if (--entry.References > 0)
            {
                return;
            }

            Entries.Remove(entry.Key);
        }

        // Models built on it hold aliases of its tensors; the storage itself lives until the last alias is disposed.
        entry.Base.Dispose();
    }

    /// <summary>One reference on a cached base; <see cref="Dispose"/> releases it (once).</summary>
    internal sealed class Lease : IDisposable
    {
        private readonly Entry entry;
        private int released;

        internal Lease(Entry entry)
        {
            this.entry = entry;
            Interlocked.Increment(ref leasesTaken);
        }

        /// <summary>The shared base: never change its weights.</summary>
        public LoadedPretrainedModel Base => entry.Base;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref released, 1) == 0)
            {
                Release(entry);
            }
        }
    }

    internal sealed class Entry(Key key, LoadedPretrainedModel loaded)
    {
        public Key Key { get; } = key;

        public LoadedPretrainedModel Base { get; } = loaded;

        public int References { get; set; }
    }

    internal readonly record struct Key(string Sha256, string Device, ScalarType Dtype);
}
