using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Lora.Internal;

/// <summary>
/// The few ML.NET environment internals this package needs: the environment behind a catalog, the MLContext
/// seed and device settings, cancellation, and <see cref="SchemaShape.Column"/>'s constructor.
/// </summary>
internal static class MlNetHost
{
    public static IHostEnvironment GetEnvironment(TransformsCatalog catalog) => CatalogUtils.GetEnvironment(catalog);

    /// <summary>The MLContext seed, or null when it was created without one.</summary>
    public static int? GetSeed(IHostEnvironment env) => (env as IHostEnvironmentInternal)?.Seed;

    /// <summary><c>mlContext.GpuDeviceId</c>.</summary>
    public static int? GetGpuDeviceId(IHostEnvironment env) => (env as IHostEnvironmentInternal)?.GpuDeviceId;

    /// <summary><c>mlContext.FallbackToCpu</c>.</summary>
    public static bool GetFallbackToCpu(IHostEnvironment env) => (env as IHostEnvironmentInternal)?.FallbackToCpu ?? true;

    /// <summary>Throws <see cref="OperationCanceledException"/> once <c>mlContext.CancelExecution()</c> was called.</summary>
    public static void CheckAlive(IHostEnvironment env) => env.CheckAlive();

    /// <summary>Writes an informational message to the channel (shown by <c>mlContext.Log</c>).</summary>
    public static void Info(IChannel channel, string message) => channel.Info(message);

    /// <summary>Requests cancellation as <c>mlContext.CancelExecution()</c> does (internal in ML.NET 5; used by tests).</summary>
    public static void CancelExecution(MLContext context) => context.CancelExecution();

    /// <summary><c>SchemaShape.Create</c> (internal in ML.NET 5; used by tests).</summary>
    public static SchemaShape ShapeOf(DataViewSchema schema) => SchemaShape.Create(schema);

    public static SchemaShape.Column Column(string name, SchemaShape.Column.VectorKind kind, DataViewType itemType, bool isKey, SchemaShape? annotations = null)
        => new(name, kind, itemType, isKey, annotations);
}
