namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The lifetime of a transformer's model, shared by every model family's transformer: the owner, each
/// <c>PredictionEngine</c> and each open cursor hold a reference, and the model is disposed when the last one lets go.
/// The owner's first <c>Dispose</c> ends the transformer; later calls do nothing. ML.NET's <c>PredictionEngine</c> calls
/// the transformer's <c>Dispose</c> when it is disposed (unless created with <c>OwnsTransformer = false</c>), and tells
/// it which caller it is by nothing but the call stack: such a call releases that engine's reference only.
/// </summary>
internal sealed class ModelLifetime
{
    private readonly Lock gate = new();
    private readonly IDisposable model;
    private readonly object owner;
    private int references = 1;     // the owner's, the engines' and the open cursors'
    private int engineReferences;   // taken by an engine's row mapper, released by an engine's Dispose call
    private bool ownerDisposed;

    /// <param name="model">What to dispose when the last reference goes.</param>
    /// <param name="owner">The transformer (named in <see cref="ObjectDisposedException"/>).</param>
    public ModelLifetime(IDisposable model, object owner)
    {
        this.model = model;
        this.owner = owner;
    }

    /// <summary>True once the model is disposed (no owner, engine or cursor holds it any more).</summary>
    public bool IsReleased
    {
        get
        {
            lock (gate)
            {
                return references == 0;
            }
        }
    }

    /// <summary>Throws when the owner has disposed the transformer.</summary>
    /// <exception cref="ObjectDisposedException">The owner disposed it.</exception>
    public void ThrowIfOwnerDisposed()
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(ownerDisposed, owner);
        }
    }

    /// <summary>Takes a reference for a prediction engine's row mapper.</summary>
    /// <exception cref="ObjectDisposedException">The owner disposed the transformer.</exception>
    public void AddEngineReference()
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(ownerDisposed, owner);
            references++;
            engineReferences++;
        }
    }

    /// <summary>Takes a reference for a cursor that computes predictions.</summary>
    /// <exception cref="ObjectDisposedException">The transformer was disposed.</exception>
    public void AddReference()
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(ownerDisposed || references == 0, owner);
            references++;
        }
    }

    /// <summary>Releases a cursor's reference taken by <see cref="AddReference"/>.</summary>
    public void ReleaseReference() => Release(fromEngine: false, cursor: true);

    /// <summary>The transformer's <c>Dispose</c>: an engine's release when a prediction engine calls it, else the owner's.</summary>
    public void Dispose() => Release(fromEngine: engineReferences > 0 && CalledByPredictionEngine(), cursor: false);

    private void Release(bool fromEngine, bool cursor)
    {
        lock (gate)
        {
            if (cursor)
            {
                // A cursor's reference.
            }
            else if (fromEngine && engineReferences > 0)
            {
                engineReferences--;
            }
            else if (!ownerDisposed)
            {
                ownerDisposed = true;
            }
            else
            {
                return;
            }

            if (references == 0 || --references > 0)
            {
                return;
            }
        }

        model.Dispose();
    }

    /// <summary>
    /// Whether this call comes from ML.NET's <c>PredictionEngine</c> disposing itself (directly, or through a
    /// <c>TransformerChain</c> it owns). ML.NET gives the transformer no other sign of which engine lets go.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static bool CalledByPredictionEngine()
    {
        foreach (var frame in new System.Diagnostics.StackTrace(fNeedFileInfo: false).GetFrames())
        {
            var type = frame.GetMethod()?.DeclaringType;
            if (type is { Namespace: "Microsoft.ML" } && type.Name.StartsWith("PredictionEngineBase`", StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }
}
