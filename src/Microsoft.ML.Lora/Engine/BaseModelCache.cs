using Microsoft.ML.Lora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The process-wide cache of loaded bases of every model family (text: <see cref="LoadedPretrainedModel"/>; images:
/// <see cref="Images.LoadedImageBase"/>): each base is held once per (weights SHA-256, device, dtype), reference counted,
/// and freed when the last lease is disposed. Models built on a lease alias its tensors
/// (<see cref="BertModel.ShareWeights"/>, <see cref="Models.Vision.ResNet.ShareWeights"/>) and never change them.
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

    /// <summary>A lease on the base of type <typeparamref name="TBase"/> with these weights on this device and dtype, if one is held; null otherwise.</summary>
    public static Lease<TBase>? TryAcquire<TBase>(string sha256, Device device, ScalarType dtype)
        where TBase : class, IDisposable
    {
        lock (Gate)
        {
            if (Entries.TryGetValue(new Key(sha256, DeviceName(device), dtype), out var entry) && entry.Base is TBase)
            {
                entry.References++;
                return new Lease<TBase>(entry);
            }

            return null;
        }
    }

    /// <summary>
    /// A lease on a base: from the cache when its fingerprint is known beforehand (<paramref name="knownSha256"/>: no read,
    /// no hash), else read by <paramref name="load"/> (counted in <see cref="Loads"/>) and added (see <see cref="Add{TBase}"/>).
    /// </summary>
    public static Lease<TBase> AcquireOrLoad<TBase>(string? knownSha256, Device device, ScalarType dtype, Func<(TBase Base, string Sha256)> load, Action<TBase> prepare)
        where TBase : class, IDisposable
    {
        if (knownSha256 is not null && TryAcquire<TBase>(knownSha256, device, dtype) is { } lease)
        {
            return lease;
        }

        var (loaded, sha) = load();
        return AddLoaded(sha, loaded, device, dtype, prepare);
    }

    /// <summary>Counts a base just read from its source in <see cref="Loads"/> and adds it (see <see cref="Add{TBase}"/>).</summary>
    public static Lease<TBase> AddLoaded<TBase>(string sha256, TBase loaded, Device device, ScalarType dtype, Action<TBase> prepare)
        where TBase : class, IDisposable
    {
        Interlocked.Increment(ref loads);
        return Add(sha256, loaded, device, dtype, prepare);
    }

    /// <summary>
    /// A lease on <paramref name="source"/>'s text base: from the cache when its fingerprint is known (no read, no hash),
    /// else loaded (read and hashed once) and added.
    /// </summary>
    public static Lease<LoadedPretrainedModel> AcquireOrLoad(PretrainedModel source, Device device, ScalarType dtype) =>
        AcquireOrLoad(FingerprintCache.TryGet(source, out string sha) ? sha : null, device, dtype,
            () =>
            {
                var loaded = source.Load(device);
                return (loaded, loaded.WeightsSha256);
            },
            loaded => PrepareText(loaded, dtype));

    /// <summary>Adds a text base just loaded on <paramref name="device"/> (converted to <paramref name="dtype"/> here) and leases it.</summary>
    public static Lease<LoadedPretrainedModel> Add(LoadedPretrainedModel loaded, Device device, ScalarType dtype) =>
        Add(loaded.WeightsSha256, loaded, device, dtype, text => PrepareText(text, dtype));

    /// <summary>
    /// Adds a base just loaded on <paramref name="device"/> and leases it; <paramref name="prepare"/> readies it for sharing
    /// (a dtype conversion, freezing) before it is added. If another thread added the same weights meanwhile,
    /// <paramref name="loaded"/> is disposed and that one is leased; on failure <paramref name="loaded"/> is disposed.
    /// </summary>
    public static Lease<TBase> Add<TBase>(string sha256, TBase loaded, Device device, ScalarType dtype, Action<TBase> prepare)
        where TBase : class, IDisposable
    {
        var key = new Key(sha256, DeviceName(device), dtype);
        if (TryReuse(key, loaded) is { } reused)
        {
            return reused;
        }

        try
        {
            prepare(loaded);
        }
        catch
        {
            loaded.Dispose();
            throw;
        }

        if (TryReuse(key, loaded) is { } other)
        {
            return other;
        }

        lock (Gate)
        {
            var entry = new Entry(key, loaded) { References = 1 };
            Entries.Add(key, entry);
            return new Lease<TBase>(entry);
        }
    }

    /// <summary>Autocast's policy for a text base (matmuls in the low precision, LayerNorm and the residual stream float32), all frozen.</summary>
    private static void PrepareText(LoadedPretrainedModel loaded, ScalarType dtype)
    {
        if (dtype != ScalarType.Float32)
        {
            loaded.Model.ToMixedPrecision(dtype);
        }

        foreach (var parameter in loaded.Model.parameters())
        {
            parameter.requires_grad = false;
        }
    }

    private static Lease<TBase>? TryReuse<TBase>(Key key, TBase loaded)
        where TBase : class, IDisposable
    {
        lock (Gate)
        {
            if (!Entries.TryGetValue(key, out var existing))
            {
                return null;
            }

            if (existing.Base is not TBase)
            {
                throw new InvalidOperationException($"A base of another kind ({existing.Base.GetType().Name}) is held with weights SHA-256 {key.Sha256}.");
            }

            existing.References++;
            loaded.Dispose();
            return new Lease<TBase>(existing);
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
    /// <typeparam name="TBase">The family's loaded base.</typeparam>
    internal sealed class Lease<TBase> : IDisposable
        where TBase : class, IDisposable
    {
        private readonly Entry entry;
        private int released;

        internal Lease(Entry entry)
        {
            this.entry = entry;
            Interlocked.Increment(ref leasesTaken);
        }

        /// <summary>The shared base: never change its weights.</summary>
        public TBase Base => (TBase)entry.Base;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref released, 1) == 0)
            {
                Release(entry);
            }
        }
    }

    internal sealed class Entry(Key key, IDisposable loaded)
    {
        public Key Key { get; } = key;

        public IDisposable Base { get; } = loaded;

        public int References { get; set; }
    }

    internal readonly record struct Key(string Sha256, string Device, ScalarType Dtype);
}
