import TetherRuntime

/// Where a task is in its life, as this manager sees it: one value, and
/// every move between values in `moved(_:task:)`. The phase written to
/// task.json is derived from it, so the record on disk and the task in
/// memory never disagree.
///
///     creating ──created──▶ created ──started──▶ running ⇄ paused
///                              │                    │
///                              └───────exited───────┴──▶ stopped
///     any but creating ──deleteBegan──▶ deleting(prior) ──deleted──▶ deleted
///                                            └──deleteFailed──▶ prior
indirect enum TaskState: Sendable, Equatable {
    /// Bundle written, shim starting or creating: not shown to anyone.
    case creating
    case created
    case running
    case paused
    case stopped
    /// A delete under way; `prior` is where a failed one goes back to.
    case deleting(prior: TaskState)
    case deleted

    enum Move: String, Sendable {
        case created, started, paused, resumed, exited, deleteBegan, deleteFailed, deleted
    }

    /// The state after `move`, or an error that says why it cannot happen.
    func moved(_ move: Move, task id: String) throws(RuntimeError) -> TaskState {
        switch (self, move) {
        case (.creating, .created): return .created
        case (.created, .started), (.running, .started): return .running
        case (.running, .paused), (.paused, .paused): return .paused
        case (.paused, .resumed), (.running, .resumed): return .running
        // An exit may come in before the start, pause or resume that caused it is recorded.
        case (.stopped, .started), (.stopped, .paused), (.stopped, .resumed): return .stopped
        case (.created, .exited), (.running, .exited), (.paused, .exited), (.stopped, .exited): return .stopped
        case (.creating, .exited): return .creating  // the create under way deals with it
        case (.deleting, .exited): return .deleting(prior: .stopped)
        case (.deleted, .exited): return .deleted
        case (.creating, .deleteBegan):
            throw RuntimeError(.failedPrecondition, "task \"\(id)\" is still being created; try again")
        case (.deleting, .deleteBegan):
            throw RuntimeError(.failedPrecondition, "task \"\(id)\" is already being deleted")
        case (.deleted, .deleteBegan):
            throw RuntimeError(.containerDoesNotExist, "task \"\(id)\" has been deleted")
        case (_, .deleteBegan): return .deleting(prior: self)
        case (.deleting(let prior), .deleteFailed): return prior
        case (.deleting, .deleted): return .deleted
        default:
            throw RuntimeError(.failedPrecondition, "task \"\(id)\" is \(name): it cannot be \(move.rawValue)")
        }
    }

    var name: String {
        switch self {
        case .creating: "being created"
        case .created: "created"
        case .running: "running"
        case .paused: "paused"
        case .stopped: "stopped"
        case .deleting: "being deleted"
        case .deleted: "deleted"
        }
    }

    /// What task.json says.
    var phase: TaskRecord.Phase {
        switch self {
        case .creating: .creating
        case .created: .created
        case .running: .running
        case .paused: .paused
        case .stopped: .stopped
        case .deleting, .deleted: .deleting
        }
    }

    /// Shown to clients: everything but a create or a delete that is done or not done yet.
    var isVisible: Bool { self != .creating && self != .deleted }

    /// A create or a delete is under way here: the shim's death is theirs to handle.
    var isInTransition: Bool {
        if case .deleting = self { return true }
        return self == .creating || self == .deleted
    }

    /// The state a record on disk stands for (a reload). A delete an
    /// earlier manager did not finish is where it was before: the next
    /// delete finishes it.
    init(_ record: TaskRecord) {
        switch record.phase {
        case .creating: self = .creating
        case .created: self = record.exit == nil ? .created : .stopped
        case .running: self = record.exit == nil ? .running : .stopped
        case .paused: self = record.exit == nil ? .paused : .stopped
        case .stopped: self = .stopped
        case .deleting: self = record.exit == nil ? .running : .stopped
        }
    }

    /// As the API's Status.
    var status: Status {
        switch self {
        case .creating, .created: .created
        case .running: .running
        case .paused: .paused
        case .stopped, .deleting, .deleted: .stopped
        }
    }
}
